"""The ``iri invert`` job: one IRI set per (checkpoint, regularizer).

Chooses the targets (protocol 5: 10 test images per class, seeded), draws the
shared seed image (and, with ``inversion.restarts``, a new seed for each restart
of the IRIs that did not converge), builds the regularizer's objective from params, inverts
the targets batch by batch and writes the folder described in
:mod:`iri_alignment.irisets`. Interrupted, it resumes: every finished batch
and, every ``checkpoint_every`` steps (default :data:`CHECKPOINT_EVERY`), the
running batch are saved under ``<out>/.partial/``, which is removed once the
set is complete.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from iri_alignment.checkpoints import load_model
from iri_alignment.data.loading import open_split
from iri_alignment.devices import compile_mode
from iri_alignment.io import atomic_write
from iri_alignment.inversion import RANDOM_SEED_KINDS, invert, make_seed, representation_distances
from iri_alignment.irisets import write_iriset
from iri_alignment.params import (fast_path_settings, inversion_iterations, inversion_restarts, params_hash,
                                  regularizer_section)
from iri_alignment.regularizers import make_objective
from iri_alignment.tracking import log_artifact, log_metrics, start_run

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 250  # inversion steps between resumable snapshots


def select_targets(labels: np.ndarray, per_class: int, seed: int, classes: int | None = None) -> np.ndarray:
    """``per_class`` indices of each class, drawn without replacement with a
    seeded generator, ordered by class (protocol 5: 10 per class).

    ``classes``: only that many classes, drawn by their own seeded generator;
    default all (ImageNet's 100 targets: one from each of 100 classes)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = []
    present = np.unique(labels)
    if classes is not None:
        if classes > len(present):
            raise ValueError(f"inversion.targets.classes = {classes}, but the split has {len(present)} classes")
        present = np.sort(np.random.default_rng([seed, 1]).choice(present, size=classes, replace=False))
    for c in present:
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise ValueError(f"class {c} has {len(pool)} images, fewer than the {per_class} targets asked for")
        chosen.append(np.sort(rng.choice(pool, size=per_class, replace=False)))
    return np.concatenate(chosen)


def load_targets(params: dict, *, device, indices=None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The target images, labels and dataset indices.

    Decision (default): ``targets.per_class`` test images per class with test
    transforms. ``targets.faithful``: the authors' choice, random training
    images with training augmentation.
    """
    from iri_alignment import augment

    cfg = params["inversion"]["targets"]
    split = open_split(params, "train" if cfg["faithful"] else cfg["split"])
    labels = split.labels.numpy()
    if indices is None:
        indices = select_targets(labels, cfg["per_class"], params["study"]["seed"], cfg.get("classes"))
    x, y = split.get(indices, device)
    if cfg["faithful"]:
        x = augment.augment("standard", x, params["data"]["augmentation"], torch.Generator().manual_seed(params["study"]["seed"]))
    return x, y, np.asarray(indices)


def proxy_for(params: dict, regularizer: str, *, device):
    """The proxy the adversarial regularizer pushes away from (None for the others)."""
    if regularizer != "adversarial":
        return None
    from iri_alignment.proxies import get_proxy

    return get_proxy(regularizer_section(params, regularizer)["proxy"], device=device)


def inversion_null(distances: torch.Tensor, rep_loss: np.ndarray) -> dict[str, np.ndarray]:
    """The inversion's own null (protocol 9): is each IRI closer to its own target
    than to the other targets of its set, in the model's representation?

    Args:
        distances: (N, N), ``distances[i, j]`` the rep loss of IRI i against target
            j's representation (:func:`iri_alignment.inversion.representation_distances`).
        rep_loss: (N,) each IRI's recorded rep loss against its own target.

    Returns:
        the results.csv columns, each (N,): ``rep_other_min`` and ``rep_other_median``
        (the smallest and the median distance to another target's representation;
        NaN in a set of one target) and ``rep_specific`` (``rep_loss < rep_other_min``;
        False in a set of one target: there is nothing to be specific against).
    """
    d = distances.detach().cpu().numpy()
    n = len(d)
    if d.shape != (n, n) or len(rep_loss) != n:
        raise ValueError(f"inversion_null needs an (N, N) distance matrix and N rep losses, "
                         f"got {d.shape} and {len(rep_loss)}")
    if n < 2:
        log.warning("an IRI set of %d target has no other targets: rep_specific is False", n)
        other_min = other_median = np.full(n, np.nan, dtype=d.dtype)
    else:
        others = d[~np.eye(n, dtype=bool)].reshape(n, n - 1)
        other_min, other_median = others.min(1), np.median(others, axis=1).astype(d.dtype)
    with np.errstate(invalid="ignore"):
        specific = np.asarray(rep_loss) < other_min
    return {"rep_other_min": other_min, "rep_other_median": other_median, "rep_specific": specific}


def _invert_batches(model, targets: torch.Tensor, seed_image: torch.Tensor, *, objective_for, inv: dict, iterations: int,
                    partial: Path, prefix: str, job_hash: str, gen_seed: int, progress: bool,
                    checkpoint_every: int = CHECKPOINT_EVERY) -> dict:
    """Invert ``targets`` batch by batch from ``seed_image``, resumably: each finished
    batch is ``<partial>/<prefix>batch-NNN.pt``, the running one is snapshotted to
    ``<partial>/<prefix>batch-NNN.running.pt`` every ``checkpoint_every`` steps
    (default :data:`CHECKPOINT_EVERY`; 0: never) and resumed from there;
    ``objective_for(generator=g)`` builds a batch's objective. Returns the
    concatenated images, rep losses and best iterations (CPU)."""
    results = []
    bs = inv["batch_size"]
    for b, start in enumerate(range(0, len(targets), bs)):
        done = partial / f"{prefix}batch-{b:03d}.pt"
        running = partial / f"{prefix}batch-{b:03d}.running.pt"
        saved = torch.load(done, weights_only=True) if done.exists() else None
        if saved is not None and saved["hash"] != job_hash:
            saved = None
        if saved is None:
            resume = torch.load(running, weights_only=True) if running.exists() else None
            if resume is not None and resume.get("hash") != job_hash:
                resume = None
            gen = torch.Generator().manual_seed(gen_seed + b)

            def snapshot(state, path=running):
                with atomic_write(path) as fh:
                    torch.save({**state, "hash": job_hash}, fh)

            res = invert(model, targets[start:start + bs], seed_image, objective_for(generator=gen), iterations=iterations,
                         step_size=inv["step_size"], fake_relu=inv["fake_relu"], generator=gen,
                         state={k: v for k, v in resume.items() if k != "hash"} if resume else None,
                         checkpoint_every=checkpoint_every, on_checkpoint=snapshot, progress=progress,
                         precision=inv.get("precision", "fp32"), compile_mode=inv.get("compile_mode"))
            saved = {"hash": job_hash, "images": res.images.cpu(), "rep_loss": res.rep_loss.cpu(),
                     "best_iteration": res.best_iteration.cpu()}
            with atomic_write(done) as fh:
                torch.save(saved, fh)
            running.unlink(missing_ok=True)
        results.append(saved)
    return {key: torch.cat([r[key] for r in results]) for key in ("images", "rep_loss", "best_iteration")}


def generate(params: dict, *, checkpoint: str | Path, regularizer: str, out: str | Path, device, seed_type: str | None = None,
             iterations: int | None = None, target_indices=None, progress: bool = True,
             checkpoint_every: int = CHECKPOINT_EVERY) -> dict:
    """Generate and write one IRI set; return its summary (mean loss, % converged, IRIs restarted).

    Every target starts from the shared seed (seed 0, drawn with ``study.seed``).
    With ``inversion.restarts[regularizer] = R`` (default 0, the protocol), an
    IRI whose best rep loss is still above ``converged_below`` is inverted again
    from seed k (drawn with ``study.seed + k``), k = 1..R, and keeps its
    lowest-loss attempt; the table's ``seed`` column says which seed each IRI
    came from, and scoring compares every IRI with its own seed.

    The inversion's own null (protocol 9): every kept IRI (the float best
    iterate, on which ``rep_loss`` is measured too) is also measured against
    every other target's representation with the same normalised distance;
    results.csv gets ``rep_other_min``, ``rep_other_median`` and
    ``rep_specific`` (:func:`inversion_null`), tensors.pt the whole (N, N)
    matrix ``rep_distances``, and the summary ``pct_rep_specific``.

    Args:
        params: the study parameters (``inversion``, ``study.seed``, ``data``).
        checkpoint: the trained model's checkpoint.
        regularizer: one of :data:`iri_alignment.regularizers.REGULARIZERS`.
        out: the IRI set's folder (:mod:`iri_alignment.irisets`).
        device: where to invert.
        seed_type: the seed image kind (default None: ``inversion.seed_type``).
        iterations: steps per inversion (default None: the regularizer's from params).
        target_indices: dataset indices of the targets (default None: chosen
            by :func:`select_targets`).
        progress: show progress bars (default True).
        checkpoint_every: steps between resumable snapshots of the running batch
            (default :data:`CHECKPOINT_EVERY`; 0: none). Not part of the job's
            hash: a run may resume under another interval.
    """
    inv = params["inversion"]
    seed_type = seed_type or inv["seed_type"]
    iterations = iterations or inversion_iterations(params, regularizer)
    restarts = inversion_restarts(params, regularizer)
    if restarts and seed_type not in RANDOM_SEED_KINDS:
        log.warning("inversion.restarts ignored: a %s seed is the same image every time", seed_type)
        restarts = 0
    out = Path(out)
    partial = out / ".partial"
    memory_format = params["study"].get("memory_format", "contiguous")
    model, ckpt = load_model(checkpoint, device=device, memory_format=memory_format)
    params = {**params, "data": {**params["data"], "dataset": ckpt.meta["dataset"]}}
    if ckpt.meta.get("external"):  # a folder dataset's images are resized to the model's input
        from iri_alignment.data.folder import with_image_size

        params = with_image_size(params, ckpt.meta["resolved"]["input_size"])
    targets, labels, indices = load_targets(params, device=device, indices=target_indices)
    study_seed = params["study"]["seed"]
    seeds = [make_seed(seed_type, targets.shape[1:], study_seed, device=device)]
    settings = {"regularizer": regularizer, "seed_type": seed_type, "iterations": iterations, "step_size": inv["step_size"],
                "fake_relu": inv["fake_relu"], "restarts": restarts, "section": regularizer_section(params, regularizer),
                "targets": [int(i) for i in indices], "checkpoint_hash": ckpt.meta["params_hash"]}
    settings.update(fast_path_settings(params["study"]))
    precision = params["study"].get("precision", "fp32")
    job_hash = params_hash(settings)

    tags = {"dataset": ckpt.meta["dataset"], "arch": ckpt.meta["arch"], "regime": ckpt.meta["regime"],
            "regularizer": regularizer, "params_hash": job_hash, "checkpoint": str(checkpoint),
            "replicate": ckpt.meta.get("replicate", 0), "precision": precision, "memory_format": memory_format}
    name = ckpt.meta["id"] if ckpt.meta.get("external") else f"{ckpt.meta['arch']}-{ckpt.meta['regime']}"
    with start_run(params, stage="invert", name=f"{name}-{regularizer}", tags=tags,
                   log_params={k: v for k, v in settings.items() if k != "targets"}):
        proxy = proxy_for(params, regularizer, device=device)  # built once, shared by the batches
        objective_for = functools.partial(make_objective, regularizer, settings["section"], proxy=proxy)
        invert_batches = functools.partial(
            _invert_batches, model, objective_for=objective_for,
            inv={**inv, "precision": precision, "compile_mode": compile_mode(device, params["study"].get("compile", False))},
            iterations=iterations, partial=partial, job_hash=job_hash, progress=progress,
            checkpoint_every=checkpoint_every)
        best = invert_batches(targets, seeds[0], prefix="", gen_seed=study_seed)
        seed_of = torch.zeros(len(indices), dtype=torch.long)
        for k in range(1, restarts + 1):
            todo = torch.nonzero(best["rep_loss"] > inv["converged_below"]).flatten()
            if len(todo) == 0:
                break
            log.info("restart %d of %d: %d IRIs above rep loss %g start again from seed %d", k, restarts, len(todo),
                     inv["converged_below"], k)
            seeds.append(make_seed(seed_type, targets.shape[1:], study_seed + k, device=device))
            again = invert_batches(targets[todo.to(targets.device)], seeds[k], prefix=f"restart-{k}-",
                                   gen_seed=study_seed + 1000 * k)
            better = again["rep_loss"] < best["rep_loss"][todo]
            for key in best:
                best[key][todo[better]] = again[key][better]
            seed_of[todo[better]] = k

        rep_loss = best["rep_loss"].numpy()
        # the inversion's own null, on the kept float IRIs (tensors.pt), as rep_loss is
        distances = representation_distances(model, best["images"].to(device), targets,
                                             normalize=objective_for().normalize, fake_relu=inv["fake_relu"],
                                             batch_size=inv["batch_size"]).cpu()
        table = pd.DataFrame({
            "index": np.arange(len(indices)), "target_index": indices, "label": labels.cpu().numpy(),
            "rep_loss": rep_loss, "converged": rep_loss <= inv["converged_below"],
            "best_iteration": best["best_iteration"].numpy(), "seed": seed_of.numpy(),
            **inversion_null(distances, rep_loss),
        })
        if not table["rep_specific"].all():
            log.warning("%d of %d IRIs are no closer to their own target's representation than to another "
                        "target's (results.csv: rep_specific)", int((~table["rep_specific"]).sum()), len(table))
        summary = {"mean_rep_loss": float(rep_loss.mean()), "median_rep_loss": float(np.median(rep_loss)),
                   "pct_converged": float(100 * table["converged"].mean()), "n": len(table),
                   "restarted": int((seed_of > 0).sum()),
                   "pct_rep_specific": float(100 * table["rep_specific"].mean())}
        meta = {"checkpoint": str(checkpoint), "model": ckpt.meta, **settings, "summary": summary, "hash": job_hash,
                "profile": params["profile"]}
        write_iriset(out, seeds=torch.cat(seeds).cpu(), targets=targets.cpu(), iris=best["images"], table=table,
                     target_indices=indices, meta=meta, rep_distances=distances)
        log_metrics(summary)
        log_artifact(out / "grid.png")
        log_artifact(out / "results.csv")
    if partial.exists():
        for f in partial.iterdir():
            f.unlink()
        partial.rmdir()
    return summary
