"""Which jobs a study consists of, and where each writes: the one place the
Snakemake rules, the report and the tests learn the layout of ``results/``.

::

    results/models/<model_id>/model.pt, metrics.json, epoch-NNNN.pt   training
    results/evaluation/<model_id>.json                                evaluation
    results/iris/<model_id>/<regularizer>/meta.json (+ images)        IRI sets
    results/scores/<model_id>/<regularizer>.csv (+ .json)             alignment scores
    results/tables/, results/figures/                                 the report

An external model (``models.external``) keeps the id of its entry and has a
descriptor, ``results/models/<id>/external.json``, in place of ``model.pt``.

A trained ``model_id`` is ``<arch>-<regime>``, ``<arch>-<regime>-r<k>`` for training
replicate k >= 1 of ``study.replicates`` (replicate 0 keeps the plain id, so
raising the count adds jobs and renames nothing), and either with
``@<epoch>`` for an intermediate SimCLR checkpoint (inverted under
``inversion.epochs_regularizer`` only, for the alignment-over-epochs table).
"""

from __future__ import annotations

import re
from pathlib import Path

from iri_alignment.data.specs import get_spec
from iri_alignment.params import (fast_path_settings, inversion_iterations, inversion_restarts, params_hash,
                                  regularizer_section)

MODEL_ID = re.compile(r"^(?P<arch>[a-z0-9]+)-(?P<regime>[a-z0-9-]+?)(?:-r(?P<replicate>[1-9]\d*))?(?:@(?P<epoch>\d{4}))?$")


def model_id(arch: str, regime: str, epoch: int | None = None, replicate: int = 0) -> str:
    return f"{arch}-{regime}" + (f"-r{replicate}" if replicate else "") + (f"@{epoch:04d}" if epoch is not None else "")


def parse_model_id(mid: str) -> tuple[str, str, int | None]:
    """``"resnet18-simclr-r1@0050"`` -> ``("resnet18", "simclr", 50)`` (the replicate: :func:`replicate_of`)."""
    m = MODEL_ID.match(mid)
    if not m or re.search(r"-r\d+$", m["regime"]):  # "-r0" too: replicate 0 has no suffix, one name per model
        raise ValueError(f"not a model id: {mid!r} (expected <arch>-<regime>[-r<replicate>][@<epoch>])")
    return m["arch"], m["regime"], int(m["epoch"]) if m["epoch"] else None


def replicate_of(mid: str) -> int:
    """``"resnet18-adversarial-r2"`` -> 2; an id without ``-r<k>`` is replicate 0."""
    parse_model_id(mid)
    return int(MODEL_ID.match(mid)["replicate"] or 0)


def base_model_id(mid: str) -> str:
    """The id without its replicate: ``"resnet18-simclr-r1@0050"`` -> ``"resnet18-simclr@0050"``."""
    arch, regime, epoch = parse_model_id(mid)
    return model_id(arch, regime, epoch)


def replicates(params: dict) -> list[int]:
    """The training replicates of the study: ``0 .. study.replicates - 1``."""
    return list(range(params["study"].get("replicates", 1)))


def trained_models(params: dict) -> list[tuple[str, str]]:
    """(arch, regime) of every model the study trains (each ``study.replicates`` times)."""
    t = params["training"]
    return ([(a, r) for a in params["models"]["archs"] for r in t["regimes"]]
            + [(a, r) for a in t["contrastive"]["archs"] for r in t["contrastive_regimes"]])


def trained_model_ids(params: dict) -> list[str]:
    """Every training job's model id: each model of :func:`trained_models` once per replicate."""
    return [model_id(a, r, replicate=k) for k in replicates(params) for a, r in trained_models(params)]


def external_ids(params: dict) -> list[str]:
    """The ids of ``models.external`` (studied like trained models, never trained)."""
    return [e["id"] for e in params["models"].get("external", [])]


def study_model_ids(params: dict) -> list[str]:
    """Every model the study evaluates and inverts: each trained replicate, then each external model."""
    return trained_model_ids(params) + external_ids(params)


def inverted_replicates(params: dict, regularizer: str) -> list[int]:
    """The replicates inverted under ``regularizer``: the first ``inversion.replicates[regularizer]``
    (default: all of them), so a costly regularizer can be run on fewer replicates than reg-free."""
    cap = params["inversion"].get("replicates", {}).get(regularizer)
    return replicates(params)[:cap] if cap else replicates(params)


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
    jobs = [(model_id(a, r, replicate=k), reg) for reg in inv["regularizers"] for k in inverted_replicates(params, reg)
            for a, r in trained_models(params)]
    jobs += [(mid, reg) for reg in inv["regularizers"] for mid in external_ids(params)]
    epochs_reg = inv["epochs_regularizer"]
    jobs += [(model_id(a, r, e, replicate=k), epochs_reg) for k in inverted_replicates(params, epochs_reg)
             for a, r in trained_models(params) for e in kept_epochs(params, r)]
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


def model_file(params: dict, results: str | Path, mid: str) -> Path:
    """What evaluate and invert load for ``mid``: its checkpoint, or an external model's descriptor."""
    if mid in external_ids(params):
        return Path(results) / "models" / mid / "external.json"
    return checkpoint_path(results, mid)


def external_hash(params: dict, mid: str) -> str:
    """The inspection job's hash: the entry (its pinned sha256 included) and the study's dataset."""
    entry = next(e for e in params["models"]["external"] if e["id"] == mid)
    return params_hash({"entry": entry, "dataset": params["data"]["dataset"]})


def checkpoint_path(results: str | Path, mid: str) -> Path:
    arch, regime, epoch = parse_model_id(mid)
    folder = Path(results) / "models" / model_id(arch, regime, replicate=replicate_of(mid))
    return folder / (f"epoch-{epoch:04d}.pt" if epoch is not None else "model.pt")


def data_marker(params: dict) -> str | None:
    """The file that exists once the study's dataset is ready (None for
    ImageNet, which is the user's folder and only checked)."""
    data = params["data"]
    name = data["dataset"]
    if get_spec(name).family in ("imagenet", "folder"):
        return None
    if name == "shapes":
        return f"{data['root']}/shapes/meta.json"
    from iri_alignment.data.sources import CIFAR_SOURCES

    return f"{data['root']}/{name}/{CIFAR_SOURCES[name].folder}/.verified"


# -- what each job's result depends on (Snakemake reruns a job when its hash changes) --


def train_hash(params: dict, arch: str, regime: str, replicate: int = 0) -> str:
    from iri_alignment.training import run_hash

    return run_hash(params, params["data"]["dataset"], arch, regime, replicate)


def model_pattern(regimes) -> str:
    """Snakemake wildcard constraint of the model ids (any replicate) of ``regimes``."""
    return r"[a-z0-9]+-(" + "|".join(sorted(regimes, key=len, reverse=True)) + r")(-r[1-9]\d*)?"


def evaluation_hash(params: dict) -> str:
    return params_hash(params["evaluation"])


def inversion_hash(params: dict, regularizer: str) -> str:
    inv = params["inversion"]
    common = {k: v for k, v in inv.items() if not isinstance(v, dict) or k == "targets"}
    common.pop("regularizers", None)
    common.pop("epochs_regularizer", None)  # which checkpoints are inverted, not how: inversion_jobs reads it
    common["iterations"] = inversion_iterations(params, regularizer)
    common["restarts"] = inversion_restarts(params, regularizer)
    return params_hash({**common, "section": regularizer_section(params, regularizer), "seed": params["study"]["seed"],
                        **fast_path_settings(params["study"])})


def feature_models(params: dict) -> list[str]:
    """The models the saliency, representation-distance and counterfactual experiments compare:
    standard and AT of every trained architecture that has both (replicate 0)."""
    regimes = params["training"]["regimes"]
    if not {"standard", "adversarial"} <= set(regimes):
        return []
    return [model_id(a, r) for a in params["models"]["archs"] for r in ("standard", "adversarial")]


def nonrobust_jobs(params: dict) -> list[tuple[str, str]]:
    """(variant, kind) of the non-robust-features experiment; none unless the study trains a
    standard model of ``features.arch`` (the plain variant's source)."""
    cfg = params["features"]
    if "standard" not in params["training"]["regimes"] or cfg["arch"] not in params["models"]["archs"]:
        return []
    return [(v, k) for v in cfg["nonrobust"]["variants"] for k in ("det", "rand")]


def features_hash(params: dict, section: str) -> str:
    """A features job reruns when its settings (or the recipe of the models it trains) change."""
    recipe = {"training": params["training"]["supervised"], "standard": params["training"]["regime"].get("standard"),
              "study": fast_path_settings(params["study"])} if section == "nonrobust" else {}
    return params_hash({"features": params["features"][section], "arch": params["features"]["arch"],
                        "seed": params["study"]["seed"], **recipe})


def survey_sets(params: dict) -> list[tuple[str, str]]:
    """(model_id, regularizer) of the IRI sets the DAG's human study shows: the final models of
    replicate 0 (trained and external) under each of ``survey.regularizers`` that was inverted."""
    wanted = params["survey"].get("regularizers", ["reg-free"])
    jobs = set(inversion_jobs(params))
    return [(m, r) for r in wanted for m in study_model_ids(params)
            if (m, r) in jobs and "@" not in m and (m in external_ids(params) or replicate_of(m) == 0)]


def survey_hash(params: dict) -> str:
    """The study build reruns when the survey's design or the triplets' seed change."""
    survey = {k: v for k, v in params["survey"].items() if k != "responses"}
    return params_hash({"survey": survey, "clustering_seed": params["scoring"]["clustering_seed"]})


def scoring_hash(params: dict) -> str:
    return params_hash(params["scoring"])


def report_hash(params: dict) -> str:
    return params_hash({"report": params["report"], "scoring": params["scoring"], "floor": params["evaluation"]["floor"],
                        "converged_below": params["inversion"]["converged_below"],
                        "epochs_regularizer": params["inversion"]["epochs_regularizer"]})
