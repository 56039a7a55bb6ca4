"""Which jobs a study consists of, and where each writes: the one place the
Snakemake rules, the report and the tests learn the layout of ``results/``.

::

    results/models/<model_id>/model.pt, metrics.json, epoch-NNNN.pt   training
    results/evaluation/<model_id>.json                                evaluation
    results/iris/<model_id>/<regularizer>/meta.json (+ images)        IRI sets
    results/scores/<model_id>/<regularizer>.csv (+ .json)             alignment scores
    results/tables/, results/figures/                                 the report

A ``model_id`` is ``<arch>-<regime>``, or ``<arch>-<regime>@<epoch>`` for an
intermediate SimCLR checkpoint (inverted with the reg-free objective only,
for the alignment-over-epochs table).
"""

from __future__ import annotations

import re
from pathlib import Path

from iri_alignment.data.specs import get_spec
from iri_alignment.params import inversion_iterations, inversion_restarts, params_hash, regularizer_section

MODEL_ID = re.compile(r"^(?P<arch>[a-z0-9]+)-(?P<regime>[a-z-]+?)(?:@(?P<epoch>\d{4}))?$")


def model_id(arch: str, regime: str, epoch: int | None = None) -> str:
    return f"{arch}-{regime}" + (f"@{epoch:04d}" if epoch is not None else "")


def parse_model_id(mid: str) -> tuple[str, str, int | None]:
    """``"resnet18-simclr@0050"`` -> ``("resnet18", "simclr", 50)``."""
    m = MODEL_ID.match(mid)
    if not m:
        raise ValueError(f"not a model id: {mid!r} (expected <arch>-<regime>[@<epoch>])")
    return m["arch"], m["regime"], int(m["epoch"]) if m["epoch"] else None


def trained_models(params: dict) -> list[tuple[str, str]]:
    """(arch, regime) of every model the study trains."""
    t = params["training"]
    return ([(a, r) for a in params["models"]["archs"] for r in t["regimes"]]
            + [(a, r) for a in t["contrastive"]["archs"] for r in t["contrastive_regimes"]])


def kept_epochs(params: dict, regime: str) -> list[int]:
    """Intermediate epochs whose checkpoints a contrastive regime keeps (the
    last epoch is the final model itself)."""
    c = params["training"]["contrastive"]
    if regime not in params["training"]["contrastive_regimes"] or not c.get("keep_every"):
        return []
    return list(range(c["keep_every"], c["epochs"], c["keep_every"]))


def inversion_jobs(params: dict) -> list[tuple[str, str]]:
    """(model_id, regularizer) of every IRI set: every model under every
    regularizer, and every kept SimCLR checkpoint under ``inversion.epochs_regularizer``."""
    inv = params["inversion"]
    jobs = [(model_id(a, r), reg) for a, r in trained_models(params) for reg in inv["regularizers"]]
    jobs += [(model_id(a, r, e), inv["epochs_regularizer"]) for a, r in trained_models(params) for e in kept_epochs(params, r)]
    return jobs


def inversion_priority(params: dict, regularizer: str) -> float:
    """Snakemake priority of an inversion job: longer runs first (10 + thousands of steps).

    With the longest jobs started first, the short ones fill the cores at the
    end; in the embedded demo the 5000-step reg-free sets otherwise started
    last and left a core idle (measured: 20.6 min).
    """
    return 10 + inversion_iterations(params, regularizer) / 1000


def training_priority(params: dict, regime: str) -> float:
    """Snakemake priority of a training job: 50 (above every downstream job) plus
    its cost in thousands of forward-backward passes per training image.

    A passes count of ``epochs * views * (1 + attack steps)`` orders the jobs
    longest first, so on few cores the long adversarial runs do not start last
    (the embedded demo started ResNet18 AT third of five, 2.3 min in).
    Architecture is left out: it scales every regime alike.
    """
    from iri_alignment.training import CONTRASTIVE, regime_config

    cfg = regime_config(params, regime)
    views = 2 if regime in CONTRASTIVE else 1
    attack = cfg.get("attack") or cfg.get("variant", {}).get("attack") or {}
    return 50 + cfg["epochs"] * views * (1 + attack.get("steps", 0)) / 1000


def checkpoint_path(results: str | Path, mid: str) -> Path:
    arch, regime, epoch = parse_model_id(mid)
    folder = Path(results) / "models" / model_id(arch, regime)
    return folder / (f"epoch-{epoch:04d}.pt" if epoch is not None else "model.pt")


def data_marker(params: dict) -> str | None:
    """The file that exists once the study's dataset is ready (None for
    ImageNet, which is the user's folder and only checked)."""
    data = params["data"]
    name = data["dataset"]
    if get_spec(name).family == "imagenet":
        return None
    if name == "shapes":
        return f"{data['root']}/shapes/meta.json"
    from iri_alignment.data.sources import CIFAR_SOURCES

    return f"{data['root']}/{name}/{CIFAR_SOURCES[name].folder}/.verified"


# -- what each job's result depends on (Snakemake reruns a job when its hash changes) --


def train_hash(params: dict, arch: str, regime: str) -> str:
    from iri_alignment.training import run_hash

    return run_hash(params, params["data"]["dataset"], arch, regime)


def evaluation_hash(params: dict) -> str:
    return params_hash(params["evaluation"])


def inversion_hash(params: dict, regularizer: str) -> str:
    inv = params["inversion"]
    common = {k: v for k, v in inv.items() if not isinstance(v, dict) or k == "targets"}
    common.pop("regularizers", None)
    common.pop("epochs_regularizer", None)  # which checkpoints are inverted, not how: inversion_jobs reads it
    common["iterations"] = inversion_iterations(params, regularizer)
    common["restarts"] = inversion_restarts(params, regularizer)
    return params_hash({**common, "section": regularizer_section(params, regularizer), "seed": params["study"]["seed"]})


def scoring_hash(params: dict) -> str:
    return params_hash(params["scoring"])


def report_hash(params: dict) -> str:
    return params_hash({"report": params["report"], "scoring": params["scoring"], "floor": params["evaluation"]["floor"],
                        "converged_below": params["inversion"]["converged_below"],
                        "epochs_regularizer": params["inversion"]["epochs_regularizer"]})
