"""Timing side by side: the candidates of one stage raced round-robin, FLOPs counted,
the machine's matmul peaks, and the rows that say which path is kept.

Every variant of a stage is a :class:`Candidate`; :func:`race` builds and warms up
each, then runs ``repeats`` rounds in which each live one runs once (medians), so
that the drift of a busy machine hits all of them alike. :func:`rows` turns a race
into one row per candidate with its ratio against fp32 eager of the same round.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable

import torch

from iri_alignment.devices import bf16_native

log = logging.getLogger(__name__)

#: levers besides precision (``--levers``); ``--precisions`` adds bf16
LEVERS = ("batch", "vmap", "channels_last", "compile")
#: a lever is kept when it is at least this much faster than fp32 eager in the same round
GAIN = 1.05
REFERENCE = "fp32 eager"


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def call(fn: Callable[[], object], device) -> float:
    """Wall seconds of one call of ``fn``."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def error_text(err: BaseException) -> str:
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
            c.warmup_s = call(c.fn, device)
        except Exception as err:  # noqa: BLE001 -- a lever that fails here is a result, not a crash
            c.error = error_text(err)
            log.warning("%s failed: %s", c.name, c.error)
    for _ in range(repeats):
        for c in candidates:
            if c.error is None:
                try:
                    c.samples.append(call(c.fn, device))
                except Exception as err:  # noqa: BLE001
                    c.error = error_text(err)
    for c in candidates:
        c.fn = None  # free the models and batches


def reset_compiled() -> None:
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
        seconds = min(call(lambda: a @ b, device) for _ in range(repeats))  # noqa: B023
        peaks[precision] = 2 * size**3 / seconds / 1e9
    log.info("matmul peaks: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s", peaks["fp32"], peaks["bf16"])
    return peaks


def stage_rows(stage: str, key: dict, candidates: list[Candidate], flops_per_item: float,
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


def race_with_combination(candidates, make, repeats, device) -> list[Candidate]:
    race(candidates, repeats, device)
    combo = _combine(candidates, make)
    if combo is None:
        return candidates
    ref2 = make(())
    ref2.phase = combo.phase = 2
    race([ref2, combo], repeats, device)
    return [*candidates, ref2, combo]


def variant_name(levers: tuple[str, ...]) -> str:
    return " + ".join(levers) if levers else REFERENCE


def log_kept(rows, arch, regime=None) -> None:
    kept = next(r for r in rows if r["kept"] and r["arch"] == arch and r.get("regime") == regime)
    log.info("%s %s: kept %s (%.2fx fp32 eager)", arch, regime or "inversion", kept["variant"], kept["ratio"])
