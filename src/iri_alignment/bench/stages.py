"""The three stages the bench times, each as fp32 eager against one variant per lever:
training images/s per (arch, regime), inversion image-iterations/s per arch (with the
batch and vmap levers that stack IRI sets or replicate models), scoring pairs/s per proxy."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from torch import nn

from iri_alignment import augment
from iri_alignment.bench.race import (LEVERS, REFERENCE, Candidate, count_flops, error_text, log_kept, race,
                                      race_with_combination, reset_compiled, stage_rows, variant_name)
from iri_alignment.devices import autocast, place
from iri_alignment.inversion import invert, make_seed
from iri_alignment.models import build_model
from iri_alignment.proxies import get_proxy, paired
from iri_alignment.regularizers import make_objective
from iri_alignment.training import augmentation_config, regime_config, supervised_batch_loss

log = logging.getLogger(__name__)


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

    return Candidate(variant_name(levers), levers, build, batch_size=bs)


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
            candidates = race_with_combination([make(()), *map(make, singles)], make, repeats, device)
            reset_compiled()
            rows += stage_rows("training", {"arch": arch, "regime": regime}, candidates, flops, peaks, "images/s")
            log_kept(rows, arch, regime)
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

    return Candidate(name or variant_name(levers), levers, build, batch_size=batch, probe=fake_relu is not None)


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
        candidates = race_with_combination([make(()), *singles], make, repeats, device)
        reset_compiled()
        rows += stage_rows("inversion", {"arch": arch}, candidates, flops, peaks, "image-iterations/s")
        log_kept(rows, arch)
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
        row = stage_rows("scoring", {"proxy": name}, [candidate], count_flops(lambda: paired(proxy, x, y)) / pairs,
                    peaks, "pairs/s")[0]
        try:
            # torch.autocast itself, not devices.autocast: this measures bf16's rounding, not a
            # study.precision asked for, so no "no native bf16" warning on CPUs that emulate it
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                low = paired(proxy, x, y).float()
            row["bf16_max_abs_error"] = (low - paired(proxy, x, y)).abs().max().item()
        except Exception as err:  # noqa: BLE001
            row["bf16_max_abs_error"] = None
            row["bf16_error"] = error_text(err)
        row["pairs_per_s"] = row["rate"]
        rows.append(row)
        log.info("score %s: %.0f pairs/s", name, row["rate"] or 0)
    return rows
