"""Throughput benchmarks (``make bench``): what the study costs on this machine,
and which throughput levers pay here.

Measures, on synthetic 32 px batches at the profile's model width (override
with ``--width``), per architecture (default: the profile's architectures,
supervised regimes and proxies):

- training images/s per regime (one optimiser step per batch, augmentation
  and attack included, the forward pass and the attack under the precision's
  autocast, backward outside it, as :mod:`iri_alignment.training` runs it);
- inversion image-iterations/s (reg-free objective through
  :func:`iri_alignment.inversion.invert`, the profile's inversion batch);
- scoring pairs/s per proxy (fp32 only, see :func:`bench_scoring`);
- process start-up (``python -c "import iri_alignment.cli"``, ``iri --help``,
  and a process importing what a job imports: torch and the stage modules)
  and the number of jobs of the profile's DAG that each pay it.

Each stage is measured for the reference path, fp32 eager, and for one
variant per lever (``--precisions``, ``--levers``):

======================  ==================================================
``bf16``                bf16 autocast (a ``--precisions`` entry); the
                        optimised image, the step and the best-iterate
                        bookkeeping stay fp32 (``invert(precision=...)``)
``channels_last``       model and inputs in NHWC memory layout
``compile``             ``torch.compile`` (default inductor backend);
                        its compile seconds are reported apart from the
                        steady-state rate; training only with
                        ``--compile-training`` (minutes of compile on CPU)
``batch``               inversion: all targets in one ``invert`` call, and
                        the targets of ``replicates`` IRI sets stacked in
                        one batch through one model
``vmap``                inversion: the replicate models stacked with
                        ``torch.func.stack_module_state`` + ``vmap``, each
                        inverting its own targets, in one call
======================  ==================================================

Levers that beat the reference by at least :data:`GAIN` are then combined
into one more variant, and the fastest path, the *kept* one, is reported
next to fp32 eager. Every speed is also a ratio against fp32 eager timed in
the same round: variants run round-robin (one warm-up call each, then
``--repeats`` rounds in which each runs once; medians), so that the drift of
a busy machine hits all of them alike. FLOP utilisation: the FLOPs of one
item (``torch.utils.flop_counter.FlopCounterMode`` on the fp32 eager path)
times the rate, against the fp32 and bf16 matmul peaks measured at the start
of the same run.

The report names the machine (CPU, cores, torch threads, device, versions)
since the numbers mean nothing without it. Results go to stdout as markdown
and, with ``--out``, to a JSON file (docs/bench.md explains how to read it):
``variants`` holds every measured row; ``training`` and ``inversion`` hold,
per group, the kept path's rate under the keys :func:`paper_cost` reads
(``images_per_s``, ``image_iterations_per_s``) and fp32 eager's next to it
(``..._fp32``); ``paper_cost_hours`` is priced at the kept paths,
``paper_cost_hours_fp32`` at fp32 eager.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from iri_alignment import augment
from iri_alignment.devices import PRECISIONS, autocast, bf16_native, place, resolve_device
from iri_alignment.inversion import invert, make_seed
from iri_alignment.models import build_model
from iri_alignment.params import inversion_iterations, load_params
from iri_alignment.proxies import get_proxy, paired
from iri_alignment.regularizers import make_objective
from iri_alignment.training import augmentation_config, regime_config, supervised_batch_loss

log = logging.getLogger(__name__)

#: levers besides precision (``--levers``); ``--precisions`` adds bf16
LEVERS = ("batch", "vmap", "channels_last", "compile")
#: a lever is kept when it is at least this much faster than fp32 eager in the same round
GAIN = 1.05
REFERENCE = "fp32 eager"


# -- timing ---------------------------------------------------------------------------------


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _call(fn: Callable[[], object], device) -> float:
    """Wall seconds of one call of ``fn``."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


@dataclasses.dataclass
class Candidate:
    """One way of running a stage's unit of work: ``fn()`` processes ``items`` items
    (images, image-iterations or pairs)."""

    name: str
    levers: tuple[str, ...]
    build: Callable[[], tuple[Callable[[], object], float]]  # -> (fn, items); may raise
    batch_size: int | None = None
    probe: bool = False  # measured for information, never kept
    phase: int = 1
    fn: Callable[[], object] | None = None
    items: float = 0.0
    samples: list[float] = dataclasses.field(default_factory=list)
    warmup_s: float | None = None
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        return statistics.median(self.samples) if self.samples and not self.error else None


def race(candidates: list[Candidate], repeats: int, device) -> None:
    """Time ``candidates`` side by side: build and warm up each (a compile happens
    in its warm-up call), then ``repeats`` rounds in which each live one runs once.
    A candidate that fails to build or run keeps its error instead of a time."""
    for c in candidates:
        try:
            c.fn, c.items = c.build()
            c.warmup_s = _call(c.fn, device)
        except Exception as err:  # noqa: BLE001 -- a lever that fails here is a result, not a crash
            c.error = _error(err)
            log.warning("%s failed: %s", c.name, c.error)
    for _ in range(repeats):
        for c in candidates:
            if c.error is None:
                try:
                    c.samples.append(_call(c.fn, device))
                except Exception as err:  # noqa: BLE001
                    c.error = _error(err)
    for c in candidates:
        c.fn = None  # free the models and batches


def _reset_compiled() -> None:
    """Forget what torch.compile compiled for the last group. Every compiled ``represent``
    shares one code object, and dynamo's recompile limit (8 per code object) would
    otherwise silently send later architectures' compiled variants back to eager."""
    if hasattr(torch, "compiler") and hasattr(torch.compiler, "reset"):
        torch.compiler.reset()


class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s module tracker, whose backward hooks break
    ``torch.autograd.grad`` on a leaf (the attack's and the inversion's input gradient:
    "A leaf node was passed to _will_engine_execute_node"); only the total is needed."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (matmuls and convolutions, forward and backward) of one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_peaks(device, *, size: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of a ``size`` x ``size`` matmul (2 size^3 FLOPs) in fp32 and in bf16, the
    fastest of ``repeats`` after a warm-up, at the current torch thread count.
    ``bf16_native`` says whether the bf16 figure is a hardware peak; where bf16 is
    emulated (an AMD EPYC with AVX2: 0.3 GFLOP/s against fp32's 88) it is no ceiling,
    and the tables give no percentage of it."""
    peaks = {"size": size, "bf16_native": bf16_native(torch.device(device))}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        a @ b
        seconds = min(_call(lambda: a @ b, device) for _ in range(repeats))  # noqa: B023
        peaks[precision] = 2 * size**3 / seconds / 1e9
    log.info("matmul peaks: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s", peaks["fp32"], peaks["bf16"])
    return peaks


def _rows(stage: str, key: dict, candidates: list[Candidate], flops_per_item: float,
          peaks: dict, unit: str) -> list[dict]:
    """One row per candidate, the ratio against the ``reference`` of its round and the kept flag."""
    refs = {c.phase: c for c in candidates if c.name == REFERENCE}
    rows = []
    for c in candidates:
        ref = refs.get(c.phase, refs.get(1))
        rate = c.items / c.seconds if c.seconds else None
        ref_rate = ref.items / ref.seconds if ref.seconds else None
        gflops = rate * flops_per_item / 1e9 if rate and flops_per_item else None
        steady = c.seconds or 0.0
        row = {"stage": stage, **key, "variant": c.name, "levers": list(c.levers), "batch_size": c.batch_size,
               "unit": unit, "rate": rate, "ratio": rate / ref_rate if rate and ref_rate else None,
               "seconds": c.seconds, "gflops": gflops,
               "pct_fp32_peak": 100 * gflops / peaks["fp32"] if gflops else None,
               "pct_bf16_peak": 100 * gflops / peaks["bf16"] if gflops and peaks.get("bf16_native", True) else None,
               "compile_s": max(0.0, c.warmup_s - steady) if "compile" in c.levers and c.warmup_s else None,
               "error": c.error, "probe": c.probe, "phase": c.phase, "kept": False}
        rows.append(row)
    if len(refs) > 1:  # the phase-2 reference is only the yardstick of the combination
        rows = [r for r in rows if not (r["variant"] == REFERENCE and r["phase"] > 1)]
    eligible = [r for r in rows if r["ratio"] and not r["probe"] and not r["error"]]
    best = max(eligible, key=lambda r: r["ratio"], default=None)
    if best is not None and (best["ratio"] >= GAIN or best["variant"] == REFERENCE):
        best["kept"] = True
    else:
        for r in rows:
            r["kept"] = r["variant"] == REFERENCE and r["phase"] == 1
    return rows


def _combine(candidates: list[Candidate], make: Callable[[tuple[str, ...]], Candidate]) -> Candidate | None:
    """The variant with every lever that gained at least :data:`GAIN` in round 1 (of the
    batch-like levers, batch sizes and vmap, the best only), or None when fewer than two gained."""
    ref = next(c for c in candidates if c.name == REFERENCE)
    if not ref.seconds:
        return None
    ref_rate = ref.items / ref.seconds
    gains = {c.levers[0]: c.items / c.seconds / ref_rate for c in candidates
             if c.seconds and not c.probe and len(c.levers) == 1 and c.items / c.seconds / ref_rate >= GAIN}
    batch_like = [lv for lv in gains if lv.startswith(("batch", "vmap"))]
    chosen = [lv for lv in gains if lv not in batch_like]
    if batch_like:
        chosen.append(max(batch_like, key=gains.get))
    return make(tuple(chosen)) if len(chosen) >= 2 else None


def _race_with_combination(candidates, make, repeats, device) -> list[Candidate]:
    race(candidates, repeats, device)
    combo = _combine(candidates, make)
    if combo is None:
        return candidates
    ref2 = make(())
    ref2.phase = combo.phase = 2
    race([ref2, combo], repeats, device)
    return [*candidates, ref2, combo]


# -- training ---------------------------------------------------------------------------------


def _train_candidate(params, arch, regime, levers: tuple[str, ...], *, batches: int, device) -> Candidate:
    precision = "bf16" if "bf16" in levers else "fp32"
    bs = params["training"]["supervised"]["batch_size"]

    def build():
        cfg = regime_config(params, regime)
        layout = "channels_last" if "channels_last" in levers else "contiguous"
        model = place(build_model("shapes", arch, width=params["models"]["width"]), device, layout, trains=True).train()
        x = torch.rand(bs, 3, 32, 32, device=device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        run = torch.compile(model) if "compile" in levers else model
        gen = torch.Generator().manual_seed(0)
        y = torch.randint(0, 10, (bs,), device=device)
        aug = augmentation_config(params, cfg["augment"])

        def step():
            for _ in range(batches):
                xb = augment.augment(cfg["augment"], x, aug, gen)
                with autocast(device, precision):  # the attack too, as training.train_supervised_epoch runs it
                    loss, _ = supervised_batch_loss(run, xb, y, cfg, regime, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return step, batches * bs

    return Candidate(_name(levers), levers, build, batch_size=bs)


def bench_training(params, archs, regimes, *, batches: int, repeats: int, device, peaks: dict,
                   precisions=("fp32", "bf16"), levers=LEVERS, compile_training: bool = False) -> list[dict]:
    """Training images/s per (arch, regime) for fp32 eager and each lever, side by side."""
    singles = [("bf16",)] * ("bf16" in precisions) + [("channels_last",)] * ("channels_last" in levers)
    if compile_training and "compile" in levers:
        singles.append(("compile",))
    rows = []
    for arch in archs:
        for regime in regimes:
            def make(lv, arch=arch, regime=regime):
                return _train_candidate(params, arch, regime, lv, batches=batches, device=device)

            one = _train_candidate(params, arch, regime, (), batches=1, device=device)
            flops = count_flops(one.build()[0]) / params["training"]["supervised"]["batch_size"]  # one step
            candidates = _race_with_combination([make(()), *map(make, singles)], make, repeats, device)
            _reset_compiled()
            rows += _rows("training", {"arch": arch, "regime": regime}, candidates, flops, peaks, "images/s")
            _log_kept(rows, arch, regime)
    return rows


# -- inversion --------------------------------------------------------------------------------


class _Represent(nn.Module):
    """``model`` seen through another ``represent`` function (e.g. a compiled one):
    :func:`invert` needs only ``represent`` and ``train``/``eval``."""

    def __init__(self, model: nn.Module, represent: Callable) -> None:
        super().__init__()
        self.model, self._represent = model, represent

    def represent(self, x, fake_relu: bool = False, normalize: bool = True):
        return self._represent(x, fake_relu=fake_relu, normalize=normalize)


class _AsRepresent(nn.Module):
    """``forward`` is ``model.represent``, for :func:`torch.func.functional_call`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, fake_relu: bool = False, normalize: bool = True):
        return self.model.represent(x, fake_relu=fake_relu, normalize=normalize)


class StackedReplicates(nn.Module):
    """R same-architecture models as one: ``represent(x)`` splits ``x`` (R * B, ...) into R
    groups and runs group r through model r, all at once with ``torch.func.vmap`` over
    their stacked parameters (``stack_module_state``). ``fake_relu`` forces that choice
    (the probe that measures vmap without :class:`~iri_alignment.models.base.FakeReLU`)."""

    def __init__(self, models: list[nn.Module], fake_relu: bool | None = None) -> None:
        super().__init__()
        from torch.func import stack_module_state

        wrapped = [_AsRepresent(m) for m in models]
        self.params, self.buffers = stack_module_state(wrapped)
        for p in self.params.values():
            p.requires_grad_(False)
        self.base = copy.deepcopy(wrapped[0]).to("meta")
        self.n, self.fake_relu = len(models), fake_relu

    def represent(self, x, fake_relu: bool = False, normalize: bool = True):
        from torch.func import functional_call, vmap

        fake_relu = fake_relu if self.fake_relu is None else self.fake_relu

        def one(params, buffers, xs):
            kwargs = {"fake_relu": fake_relu, "normalize": normalize}
            return functional_call(self.base, (params, buffers), (xs,), kwargs)

        groups = x.reshape(self.n, -1, *x.shape[1:])
        return vmap(one)(self.params, self.buffers, groups).reshape(x.shape[0], -1)


def _inversion_candidate(params, arch, levers: tuple[str, ...], batch: int, *, iterations: int, device,
                         replicates: int = 0, fake_relu: bool | None = None, name: str | None = None) -> Candidate:
    """Inverting ``batch`` random targets with the ``levers`` on; ``replicates`` > 1 stacks that
    many models with vmap (``batch`` is then all of their targets)."""
    precision = "bf16" if "bf16" in levers else "fp32"

    def build():
        def new_model():
            layout = "channels_last" if "channels_last" in levers else "contiguous"
            return place(build_model("shapes", arch, width=params["models"]["width"]), device, layout).eval()

        if replicates > 1:
            model: nn.Module = StackedReplicates([new_model() for _ in range(replicates)], fake_relu=fake_relu)
        else:
            model = new_model()
        if "compile" in levers:
            model = _Represent(model, torch.compile(model.represent))
        targets = torch.rand(batch, 3, 32, 32, device=device)
        seed = make_seed("noise", (3, 32, 32), 0, device=device)
        objective = make_objective("reg-free", None)

        def run():
            invert(model, targets, seed, objective, iterations=iterations, progress=False, precision=precision)

        return run, batch * iterations

    return Candidate(name or _name(levers), levers, build, batch_size=batch, probe=fake_relu is not None)


def inversion_batches(params, replicates: int) -> tuple[int, dict[str, int]]:
    """The profile's inversion batch (the reference: ``inversion.batch_size``, at most
    all targets), and the ``batch`` lever's sizes: all targets of an IRI set in one
    call, and the targets of ``replicates`` sets stacked through one model (sizes
    equal to the reference's are left out)."""
    n_targets = params["inversion"]["targets"]["per_class"] * 10
    ref = min(params["inversion"]["batch_size"], n_targets)
    sizes = {}
    for lever, size in (("batch all targets", n_targets), (f"batch {replicates} sets", replicates * n_targets)):
        if size not in (ref, *sizes.values()):
            sizes[lever] = size
    return ref, sizes


def bench_inversion(params, archs, *, iterations: int, repeats: int, device, peaks: dict,
                    precisions=("fp32", "bf16"), levers=LEVERS, replicates: int = 3) -> list[dict]:
    """Inversion image-iterations/s per arch for fp32 eager and each lever, side by side.
    Every variant runs the same ``iterations`` per call, so the per-call overhead (the
    targets' and the last iterate's forward passes) weighs the same in each. The vmap
    lever inverts ``replicates`` models' reference batches at once; as the models'
    :class:`~iri_alignment.models.base.FakeReLU` may not support vmap, a probe row
    measures it with ``fake_relu`` off (same FLOPs, never kept)."""
    ref_batch, sizes = inversion_batches(params, replicates)
    vmap_lever = f"vmap {replicates} replicates"
    rows = []
    for arch in archs:
        def make(lv, arch=arch, **kw):
            default = replicates * ref_batch if vmap_lever in lv else ref_batch
            batch = next((sizes[x] for x in lv if x in sizes), default)
            stacked = replicates if vmap_lever in lv else 0
            return _inversion_candidate(params, arch, lv, batch, iterations=kw.pop("iterations", iterations),
                                        device=device, replicates=stacked, **kw)

        singles = [make((lever,)) for lever in sizes] if "batch" in levers else []
        if "vmap" in levers and replicates > 1:
            singles += [make((vmap_lever,)),
                        make((vmap_lever,), fake_relu=False, name=f"{vmap_lever}, fake_relu off (probe)")]
        singles += [make(("bf16",))] * ("bf16" in precisions)
        singles += [make((lever,)) for lever in ("channels_last", "compile") if lever in levers]
        # one iteration (forward + input gradient) per image: two calls' difference drops the fixed part
        two, one = (count_flops(make((), iterations=its).build()[0]) for its in (2, 1))
        flops = (two - one) / ref_batch
        candidates = _race_with_combination([make(()), *singles], make, repeats, device)
        _reset_compiled()
        rows += _rows("inversion", {"arch": arch}, candidates, flops, peaks, "image-iterations/s")
        _log_kept(rows, arch)
    for r in rows:
        r["iterations"] = iterations
    return rows


# -- scoring ----------------------------------------------------------------------------------


def bench_scoring(proxies, *, pairs: int, repeats: int, device, peaks: dict) -> list[dict]:
    """Scoring pairs/s per proxy, fp32 only. bf16 is not a lever here: SSIM's variances
    ``E[x^2] - E[x]^2`` cancel catastrophically at bf16's 8-bit mantissa; the error that
    autocast would cause is measured (``bf16_max_abs_error``) to show it."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand(pairs, 3, 32, 32, generator=gen).to(device) for _ in range(2))
    for name in proxies:
        proxy = get_proxy(name, device=device, pretrained=False)
        candidate = Candidate(REFERENCE, (), lambda proxy=proxy: (lambda: paired(proxy, x, y), pairs))  # noqa: E731
        race([candidate], repeats, device)
        row = _rows("scoring", {"proxy": name}, [candidate], count_flops(lambda: paired(proxy, x, y)) / pairs,
                    peaks, "pairs/s")[0]
        try:
            # torch.autocast itself, not devices.autocast: this measures bf16's rounding, not a
            # study.precision asked for, so no "no native bf16" warning on CPUs that emulate it
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                low = paired(proxy, x, y).float()
            row["bf16_max_abs_error"] = (low - paired(proxy, x, y)).abs().max().item()
        except Exception as err:  # noqa: BLE001
            row["bf16_max_abs_error"] = None
            row["bf16_error"] = _error(err)
        row["pairs_per_s"] = row["rate"]
        rows.append(row)
        log.info("score %s: %.0f pairs/s", name, row["rate"] or 0)
    return rows


# -- process start-up -----------------------------------------------------------------------


#: what a training, inversion or scoring job imports before it does anything (the CLI imports torch lazily)
JOB_IMPORTS = "import torch, iri_alignment.training, iri_alignment.inversion, iri_alignment.scoring"


def bench_startup(*, repeats: int = 3, profile: str = "embedded", dag: bool = True) -> dict:
    """Wall seconds (median of ``repeats``) of a Python process that imports the
    CLI, of ``iri --help`` and of one that imports what a job imports; with ``dag``, the job count of the profile's DAG
    (``snakemake -n -F``), each job being one such process."""
    bin_dir = Path(sys.executable).parent
    commands = {"import iri_alignment.cli": [sys.executable, "-c", "import iri_alignment.cli"],
                "iri --help": [str(bin_dir / "iri"), "--help"],
                JOB_IMPORTS: [sys.executable, "-c", JOB_IMPORTS]}
    out: dict = {"seconds": {}}
    for label, cmd in commands.items():
        try:
            out["seconds"][label] = statistics.median(
                _wall(cmd) for _ in range(repeats))
        except Exception as err:  # noqa: BLE001
            out["seconds"][label] = None
            out.setdefault("errors", {})[label] = _error(err)
    try:
        out["job"] = job_startup(repeats=repeats)
    except Exception as err:  # noqa: BLE001
        out["job"] = None
        out.setdefault("errors", {})["job"] = _error(err)
    out["dag_jobs"] = dag_jobs(profile) if dag else None
    return out


#: a job that does nothing but start: torch (``--threads``), MLflow, its SQLite store, one run
STARTUP_JOB = ("--threads", "1", "tracking", "start", "--name", "bench-startup")


def job_startup(*, repeats: int = 3) -> dict | None:
    """Wall seconds (median of ``repeats``, after one warm-up each) of :data:`STARTUP_JOB` as its own
    process and forked from a fork server (:mod:`iri_alignment.forkserver`), timed alternately;
    None without a ``params.yaml`` here."""
    import tempfile

    from iri_alignment.forkserver import ENV, running_server

    if not Path("params.yaml").exists():
        return None
    cmd = [str(Path(sys.executable).parent / "iri"), *STARTUP_JOB]
    with tempfile.TemporaryDirectory() as tmp, running_server() as socket_path:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        env.pop(ENV, None)
        variants = {"own process": env, "forked": {**env, ENV: socket_path}}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(repeats + 1):
            for name, variant_env in variants.items():
                seconds = _wall(cmd, variant_env)
                if round_:
                    times[name].append(seconds)
    own, forked = (statistics.median(times[name]) for name in variants)
    return {"command": "iri " + " ".join(STARTUP_JOB), "own_process_s": own, "forked_s": forked,
            "ratio": own / forked}


def _wall(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=120, env=env)
    return time.perf_counter() - start


def dag_jobs(profile: str) -> int | None:
    """Jobs of the whole DAG of ``profile`` (``snakemake -n -F``), or None where it cannot run."""
    snakemake = Path(sys.executable).parent / "snakemake"
    if not (snakemake.exists() and Path("Snakefile").exists()):
        return None
    cmd = [str(snakemake), "-n", "-F", "--nolock", "--quiet", "rules", "--config", f"profile={profile}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.findall(r"^total\s+(\d+)\s*$", done.stdout + done.stderr, flags=re.MULTILINE)
    return int(match[-1]) if match else None


# -- report -----------------------------------------------------------------------------------


def _name(levers: tuple[str, ...]) -> str:
    return " + ".join(levers) if levers else REFERENCE


def _log_kept(rows, arch, regime=None) -> None:
    kept = next(r for r in rows if r["kept"] and r["arch"] == arch and r.get("regime") == regime)
    log.info("%s %s: kept %s (%.2fx fp32 eager)", arch, regime or "inversion", kept["variant"], kept["ratio"])


def summary(rows: list[dict], keys: tuple[str, ...], rate_key: str) -> list[dict]:
    """Per group (``keys``), the fp32 eager and the kept rate: the rows ``paper_cost`` reads."""
    out = []
    for r in rows:
        if r["variant"] == REFERENCE and r["phase"] == 1:
            group = [g for g in rows if all(g[k] == r[k] for k in keys)]
            kept = next(g for g in group if g["kept"])
            out.append({**{k: r[k] for k in keys}, "batch_size": kept["batch_size"], rate_key: kept["rate"],
                        f"{rate_key}_fp32": r["rate"], "kept": kept["variant"], "kept_ratio": kept["ratio"]})
    return out


def paper_cost(report: dict, paper: dict) -> dict:
    """Hours the paper study would take at the measured throughput.

    Work model (image passes, forward + backward): supervised training
    ``epochs x n_train`` per model, times ``steps + 1`` for PGD adversarial
    training; SimCLR ``epochs x n_train x 2`` views; evaluation
    ``n_test x (attack_steps + 1)``; inversion ``targets x iterations`` per
    IRI set. Throughputs measured at another width or on another device
    scale this linearly, so run ``make bench`` on the GPU you will use,
    with ``--width 1``, for a real estimate.
    """
    t, inv = paper["training"], paper["inversion"]
    n_train, n_test = 50_000, 10_000
    train_speed = {(r["arch"], r["regime"]): r["images_per_s"] for r in report["training"]}
    inv_speed = {r["arch"]: r["image_iterations_per_s"] for r in report["inversion"]}
    hours: dict[str, float] = {"train": 0.0, "evaluate": 0.0, "invert": 0.0}
    n_targets = inv["targets"]["per_class"] * 10
    steps_all = sum(inversion_iterations(paper, r) for r in inv["regularizers"])  # per target, all regularizers
    reg_free = inversion_iterations(paper, "reg-free")  # kept SimCLR checkpoints: reg-free only
    for arch in paper["models"]["archs"]:
        std = train_speed.get((arch, "standard"))
        if not std or arch not in inv_speed:
            continue
        for regime in t["regimes"]:
            steps = t["regime"][regime].get("attack", {}).get("steps", 0)
            hours["train"] += t["supervised"]["epochs"] * n_train * (steps + 1) / std / 3600
            hours["evaluate"] += n_test * (paper["evaluation"]["attack_steps"] + 1) / (3 * std) / 3600
            hours["invert"] += steps_all * n_targets / inv_speed[arch] / 3600
    c = t["contrastive"]
    for arch in c["archs"]:
        if (arch, "standard") in train_speed and arch in inv_speed:
            for _ in t["contrastive_regimes"]:
                hours["train"] += c["epochs"] * n_train * 2 / train_speed[(arch, "standard")] / 3600
                kept = c["epochs"] // c["keep_every"] if c.get("keep_every") else 1
                hours["invert"] += (steps_all + kept * reg_free) * n_targets / inv_speed[arch] / 3600
    hours["total"] = sum(hours.values())
    return {k: round(v, 1) for k, v in hours.items()}


def machine(device) -> dict:
    """:func:`iri_alignment.provenance.machine` (CPU model, cores, threads, torch, commit) plus what the
    bench adds: the platform, the device measured and torchvision's version."""
    import torchvision

    from iri_alignment.provenance import machine as provenance_machine

    info = provenance_machine()
    return {**info, "platform": platform.platform(), "processor": info["cpu"], "cpu_count": info["cores"],
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torchvision": torchvision.__version__, "bf16_native": bf16_native(device)}


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _note(r: dict) -> str:
    notes = []
    if r.get("error"):
        notes.append("failed: " + r["error"].replace("|", "/")[:110])
    if r.get("compile_s") is not None:
        notes.append(f"compile {r['compile_s']:.1f} s")
    if r.get("phase", 1) > 1:
        notes.append("ratio vs fp32 eager of round 2")
    if r.get("probe"):
        notes.append("probe, not kept")
    if r.get("stage") == "scoring":
        err = r.get("bf16_max_abs_error")
        notes.append(f"bf16 would err by up to {err:.2g}" if err else "bf16 not applicable")
    return "; ".join(notes)


def stage_table(rows: list[dict], keys: tuple[str, ...]) -> list[str]:
    head = [*keys, "variant", "batch", f"{rows[0]['unit'] if rows else 'rate'}", "ratio vs fp32 eager", "GFLOP/s",
            "% fp32 peak", "% bf16 peak", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [*(str(r[k]) for k in keys), ("**" + r["variant"] + "**") if r["kept"] else r["variant"],
                 _fmt(r["batch_size"], "d"), _fmt(r["rate"], ",.0f"),
                 _fmt(r["ratio"], ".2f") + ("x" if r["ratio"] else ""),
                 _fmt(r["gflops"], ".1f"), _fmt(r["pct_fp32_peak"], ".1f"), _fmt(r["pct_bf16_peak"], ".1f"), _note(r)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in rows:
        if r["kept"]:
            lines.append(f"- kept, {' '.join(str(r[k]) for k in keys)}: {r['variant']} ({r['ratio']:.2f}x fp32 eager)")
    return lines


def markdown(report: dict) -> str:
    m, peaks = report["machine"], report["peaks"]
    lines = [f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
             f"device {m['device']}"
             f"{' ' + m['gpu'] if m['gpu'] else ''}, bf16 native: {'yes' if m['bf16_native'] else 'no'}, "
             f"torch {m['torch']}, commit {str(m['git_commit'])[:12]}; "
             f"profile {report['profile']}, width {report['width']}.",
             "",
             f"Matmul peaks ({peaks['size']}x{peaks['size']}): fp32 {peaks['fp32']:.1f} GFLOP/s, "
             f"bf16 {peaks['bf16']:.1f} GFLOP/s"
             f"{'' if peaks.get('bf16_native', True) else ' (emulated: not a ceiling, so no % of it is given)'}. "
             f"Bold: the kept path (fastest, and at least {GAIN:.2f}x fp32 eager).",
             "", "### Training", ""]
    lines += stage_table(report["variants"]["training"], ("arch", "regime"))
    lines += ["", "| arch | AT / standard cost (fp32 eager) |", "|---|---|"]
    lines += [f"| {a} | {v:.2f}x |" for a, v in report["adversarial_cost_ratio"].items()]
    lines += ["", "### Inversion", ""]
    lines += stage_table(report["variants"]["inversion"], ("arch",))
    lines += ["", "### Scoring", ""]
    lines += stage_table(report["variants"]["scoring"], ("proxy",))
    lines += ["", "Scoring stays fp32: SSIM's local variances E[x^2] - E[x]^2 cancel catastrophically in bf16 "
              "(8-bit mantissa); the note gives the error bf16 autocast would cause."]
    st = report.get("startup")
    if st:
        secs = st["seconds"]
        lines += ["", "### Process start-up", ""]
        lines += [f"- `{label}`: {_fmt(s, '.2f')} s" for label, s in secs.items()]
        job = st.get("job")
        if job:
            lines.append(f"- a job that only starts (`{job['command']}`: torch, MLflow and its store, one run): "
                         f"{job['own_process_s']:.2f} s as its own process, {job['forked_s']:.2f} s forked from "
                         f"`iri workers run`'s server ({job['ratio']:.1f}x)")
        if st.get("dag_jobs"):
            per_job = job["own_process_s"] if job else (secs.get(JOB_IMPORTS) or 0)
            saved = f", of which forking saves ~{st['dag_jobs'] * (per_job - job['forked_s']) / 60:.1f}" if job else ""
            lines.append(f"- {report['profile']} DAG: {st['dag_jobs']} jobs, each its own process that imports torch: "
                         f"~{st['dag_jobs'] * per_job / 60:.1f} min of start-up in total{saved} "
                         "(start-up time x jobs)")
    cost, cost32 = report["paper_cost_hours"], report["paper_cost_hours_fp32"]
    if cost is None:
        return "\n".join([*lines, "", f"Paper study cost not computed: {report.get('paper_cost_error')}"])
    lines += ["", f"Paper study at these speeds (width {report['width']}, {m['device']}): kept paths "
              f"{cost['total']} device-hours (train {cost['train']}, evaluate {cost['evaluate']}, "
              f"invert {cost['invert']}); "
              f"fp32 eager {cost32['total']}."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=float, default=None, help="model width (default: the profile's)")
    parser.add_argument("--archs", default=None, help="default: the profile's models.archs")
    parser.add_argument("--regimes", default=None, help="default: the profile's supervised training.regimes")
    parser.add_argument("--proxies", default=None, help="default: the profile's scoring.proxies")
    parser.add_argument("--batches", type=int, default=2, help="training batches per timed run")
    parser.add_argument("--iterations", type=int, default=10, help="inversion steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (medians) after one warm-up")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); the DAG runs 1 per job")
    parser.add_argument("--precisions", default="fp32,bf16", help=f"of {','.join(PRECISIONS)}; fp32 is the reference")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"of {','.join(LEVERS)} ('' for none)")
    parser.add_argument("--compile-training", action="store_true",
                        help="also torch.compile training (minutes of compile on CPU)")
    parser.add_argument("--replicates", type=int, default=None, help="models stacked by the batch and vmap levers "
                                                                      "(default: the profile's study.replicates)")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the matmul that measures the peaks")
    parser.add_argument("--no-startup", action="store_true", help="skip the process start-up measurement")
    parser.add_argument("--startup-repeats", type=int, default=3, help="start-up: median of this many processes")
    parser.add_argument("--no-dag", action="store_true", help="skip counting the DAG's jobs (snakemake -n)")
    parser.add_argument("--out", default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("iri_alignment.inversion").setLevel(logging.WARNING)  # one line per timed call otherwise

    precisions = tuple(p for p in args.precisions.split(",") if p)
    levers = tuple(lv for lv in args.levers.split(",") if lv)
    unknown = [p for p in precisions if p not in PRECISIONS] + [lv for lv in levers if lv not in LEVERS]
    if unknown:
        parser.error(f"unknown precision or lever: {', '.join(unknown)}")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args, precisions, levers)
    finally:
        torch.set_num_threads(threads)  # main() is also called in-process (tests)
    print(markdown(report))  # noqa: T201 -- the report is this command's output
    if args.out:
        from iri_alignment.io import write_json

        write_json(args.out, report)
    return report


def run(args: argparse.Namespace, precisions: tuple[str, ...], levers: tuple[str, ...]) -> dict:
    """Every measurement :func:`main`'s arguments ask for, as the report dict."""
    params = load_params(args.params, args.profile)
    if args.width:
        params["models"]["width"] = args.width
    replicates = args.replicates or params["study"].get("replicates", 1)
    device = resolve_device(args.device)
    archs = args.archs.split(",") if args.archs else list(params["models"]["archs"])
    regimes = args.regimes.split(",") if args.regimes else [r for r in params["training"]["regimes"]]
    proxies = args.proxies.split(",") if args.proxies else list(params["scoring"]["proxies"])
    started = time.perf_counter()
    peaks = matmul_peaks(device, size=args.peak_size)
    training = bench_training(params, archs, regimes, batches=args.batches, repeats=args.repeats, device=device,
                              peaks=peaks, precisions=precisions, levers=levers, compile_training=args.compile_training)
    inversion = bench_inversion(params, archs, iterations=args.iterations, repeats=args.repeats, device=device,
                                peaks=peaks, precisions=precisions, levers=levers, replicates=replicates)
    scoring = bench_scoring(proxies, pairs=256, repeats=args.repeats, device=device, peaks=peaks)
    report = {"machine": machine(device), "profile": args.profile, "width": params["models"]["width"],
              "gain_threshold": GAIN, "peaks": peaks,
              "training": summary(training, ("arch", "regime"), "images_per_s"),
              "inversion": summary(inversion, ("arch",), "image_iterations_per_s"),
              "scoring": scoring,
              "variants": {"training": training, "inversion": inversion, "scoring": scoring}}
    if not args.no_startup:
        report["startup"] = bench_startup(repeats=args.startup_repeats, profile=args.profile, dag=not args.no_dag)
    speed = {(r["arch"], r["regime"]): r["images_per_s_fp32"] for r in report["training"]}
    report["adversarial_cost_ratio"] = {a: speed[(a, "standard")] / speed[(a, "adversarial")] for a in archs
                                        if (a, "standard") in speed and (a, "adversarial") in speed}
    fp32_view = {"training": [{**r, "images_per_s": r["images_per_s_fp32"]} for r in report["training"]],
                 "inversion": [{**r, "image_iterations_per_s": r["image_iterations_per_s_fp32"]}
                               for r in report["inversion"]]}
    try:
        paper = load_params(args.params, "paper")
        report["paper_cost_hours"] = paper_cost(report, paper)
        report["paper_cost_hours_fp32"] = paper_cost(fp32_view, paper)
    except Exception as err:  # noqa: BLE001 -- an add-on: the measurements stand without it
        report["paper_cost_hours"] = report["paper_cost_hours_fp32"] = None
        report["paper_cost_error"] = _error(err)
    report["seconds"] = time.perf_counter() - started
    return report


if __name__ == "__main__":
    main()
