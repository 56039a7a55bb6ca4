"""``iri models inspect``: check that an external model is fit to be inverted, before any IRI is made.

The checks (each a key of the report; a failed check is an error naming it):

* ``eval_mode``: every module in eval mode (BatchNorm uses running statistics
  and does not rewrite them; dropout is off);
* ``deterministic``: two forward passes of one probe batch give the same
  representation bit for bit;
* ``finite`` and ``varies``: the representation is finite and differs between images;
* ``input_gradient``: the representation's norm has a non-zero gradient with
  respect to the input pixels (what the inversion follows), with fake ReLU on;
* ``fake_relu_calls``: a faked ReLU module runs exactly once per forward pass;
* ``top1`` on the first ``n`` test images when the model's classes are the dataset's.

The probe batch is the first test images of the study's dataset, or seeded
uniform noise when the dataset is not on disk.
"""

from __future__ import annotations

import logging
import time

import torch

from iri_alignment.external import DESCRIPTOR_FORMAT, ExternalModel, ExternalModelError, load_external

log = logging.getLogger(__name__)


def _probe(params: dict, size: int, n: int, device):
    """Up to ``n`` labelled test images of the study's dataset, or ``(noise, None)`` when it is unavailable."""
    from iri_alignment.data import DatasetError
    from iri_alignment.data.loading import open_split

    try:
        split = open_split(params, "test")
        x, y = split.get(range(min(n, len(split))), device)
    except (DatasetError, FileNotFoundError, ValueError) as err:
        log.warning("no test images for the probe (%s); using seeded noise and skipping top-1", err)
        return torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device), None
    return x, y


def _count_calls(module: torch.nn.Module, run) -> int:
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    try:
        run()
    finally:
        handle.remove()
    return len(calls)


def inspect_external(model: ExternalModel, params: dict, *, device="cpu", n: int = 256, batch_size: int = 64) -> dict:
    """Build, check and describe an external model (module docstring).

    Args:
        model: the parsed ``models.external`` entry.
        params: the study's params (dataset, evaluation eps).
        device: where to run the checks.
        n: test images for top-1 (default 256; 0 skips it).
        batch_size: images per forward pass for top-1.

    Returns:
        the report (JSON-ready): id, source, arch, layer and its mode, rep_dim,
        num_params, input_size, normalize, fake_relu, every check, top1, seconds.

    Raises:
        ExternalModelError: a check failed, naming it.
    """
    start = time.perf_counter()
    classifier, meta = load_external(model, params, device=device)
    resolved = meta["resolved"]
    from iri_alignment.data.folder import with_image_size

    params = with_image_size(params, resolved["input_size"])
    x, y = _probe(params, resolved["input_size"], max(n, 4), device)
    probe = x[:4]
    checks: dict[str, object] = {"eval_mode": not any(m.training for m in classifier.modules())}
    with torch.no_grad():
        rep1, rep2 = classifier.represent(probe), classifier.represent(probe)
    checks["deterministic"] = bool(torch.equal(rep1, rep2))
    checks["finite"] = bool(torch.isfinite(rep1).all())
    checks["varies"] = bool(rep1.std(0).max() > 0)
    fake = bool(resolved["fake_relu"])
    if fake and resolved["layer_mode"] != "package backbone":
        relu = dict(classifier.net.named_modules())[resolved["fake_relu"]]
        calls = _count_calls(relu, lambda: classifier.represent(probe, fake_relu=True))
        checks["fake_relu_calls"] = calls
    x_grad = probe.clone().requires_grad_(True)
    classifier.represent(x_grad, fake_relu=fake).norm().backward()
    checks["input_gradient"] = float(x_grad.grad.norm())
    problems = [name for name in ("eval_mode", "deterministic", "finite", "varies") if not checks[name]]
    if checks["input_gradient"] == 0 or checks["input_gradient"] != checks["input_gradient"]:
        problems.append("input_gradient (zero or NaN: the inversion could not move the image)")
    if checks.get("fake_relu_calls", 1) != 1:
        problems.append(f"fake_relu_calls ({resolved['fake_relu']} runs {checks['fake_relu_calls']} times per forward "
                        "pass; fake a ReLU module that runs once, e.g. the last one before the representation)")
    if problems:
        raise ExternalModelError(f"{model.id} failed inspection: {', '.join(problems)}")
    from iri_alignment.data.specs import DATASETS

    dataset = params["data"]["dataset"]
    classes = DATASETS[dataset].num_classes or None  # the folder dataset: its class folders
    if dataset == "folder":
        from iri_alignment.data.folder import folder_info

        classes = folder_info(params)["num_classes"]
    top1, reason = None, ""
    if y is None:
        reason = "no test images"
    elif n == 0:
        reason = "skipped (n = 0)"
    elif classifier.num_classes != classes:
        reason = f"the model has {classifier.num_classes} classes, {dataset} {classes}"
    else:
        correct = 0
        with torch.no_grad():
            for i in range(0, min(n, len(y)), batch_size):
                correct += int((classifier(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
        top1 = 100.0 * correct / min(n, len(y))
    report = {
        "id": model.id, "source": model.source, "arch": model.arch, "dataset": dataset, **resolved,
        "rep_dim": classifier.rep_dim, "num_classes": classifier.num_classes,
        "num_params": int(sum(p.numel() for p in classifier.parameters())),
        "weights": model.weights, "regime": model.regime, "norm": model.norm, "eps": meta["eps"],
        "checks": checks, "top1": top1, "top1_n": min(n, len(y)) if top1 is not None else 0,
        "top1_skipped": reason, "seconds": round(time.perf_counter() - start, 2),
    }
    log.info("%s: layer %s (%s), rep %d-d, %s parameters, top-1 %s", model.id, resolved["layer"],
             resolved["layer_mode"], classifier.rep_dim, f"{report['num_params']:,}",
             f"{top1:.1f}% on {report['top1_n']}" if top1 is not None else reason)
    return report


def descriptor(model: ExternalModel, params: dict, report: dict) -> dict:
    """The stand-in for a checkpoint that the DAG's evaluate and invert rules read."""
    study = {"data": params["data"], "training": {"regime": params["training"]["regime"]}}
    return {"format": DESCRIPTOR_FORMAT, "entry": model.entry, "params": study, "inspection": report}
