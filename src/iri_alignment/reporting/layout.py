"""Row order and labels of the report: the paper lists AT before standard, ResNet18 first."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

from iri_alignment.reporting.results import Results
from iri_alignment.significance import arch_name

log = logging.getLogger(__name__)

TASKS = ("2afc", "clustering")
REGULARIZERS = ("reg-free", "human-aligned", "adversarial", "freq", "fourier")
REGIMES = ("adversarial", "standard", "adversarial-noaug", "standard-simclraug", "trades", "mart", "simclr",
           "simclr-nocolor", "simclr-adv")  # row order: the paper lists AT before standard
ARCHS = ("resnet18", "resnet50", "vgg16", "inceptionv3", "densenet121")  # the paper's row order
CONTRASTIVE = ("simclr", "simclr-nocolor", "simclr-adv")
AUGMENTATION_REGIMES = ("standard", "adversarial", "adversarial-noaug", "standard-simclraug", "simclr", "simclr-nocolor",
                        "simclr-adv")
ROBUST = ("adversarial", "adversarial-noaug", "trades", "mart", "simclr-adv")  # trained against an l2 adversary
TRAINING_LABELS = {"standard": "Standard", "adversarial": "AT", "adversarial-noaug": "AT, no aug.",
                   "standard-simclraug": "Standard, SimCLR aug.", "trades": "TRADES", "mart": "MART", "simclr": "SimCLR",
                   "simclr-nocolor": "SimCLR, no colour", "simclr-adv": "SimCLR, adversarial"}
UNCONVERGED, SELF_SCORED, MISSING = "†", "‡", "–"
#: the wrong-target null of 2AFC and the target-specific margin 2AFC - null (protocol 9)
NULL_TASKS = ("2afc_null", "2afc_margin")
TASK_NAMES = {"2afc": "2AFC", "clustering": "clustering", "2afc_null": "2AFC null", "2afc_margin": "2AFC margin"}
FAILED = "✗"


def training_label(models: pd.DataFrame, model_id: str) -> str:
    """The paper's "training" column: ``AT (l2, eps=1)``, ``Standard``, ..."""
    row = models.loc[model_id]
    label = TRAINING_LABELS.get(row["regime"], row["regime"])
    if row["regime"] in ROBUST and pd.notna(row["eps"]):
        norm = row["norm"] if "norm" in row.index and isinstance(row["norm"], str) else "l2"
        label += f" ({norm}, eps={float(row['eps']):g})"
    if "external" in row.index and not pd.isna(row["external"]) and bool(row["external"]):
        label += f"; external {model_id}"
    return label


def model_label(models: pd.DataFrame, model_id: str) -> str:
    """``ResNet18 AT (l2, eps=1)`` (with ``@epoch`` for intermediate checkpoints)."""
    row = models.loc[model_id]
    epoch = f" @ epoch {row['epoch']}" if pd.notna(row["epoch"]) else ""
    return f"{arch_name(row['arch'])} {training_label(models, model_id)}{epoch}"


def order(values: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """``values`` in the order of ``preferred``, unknown ones after it alphabetically."""
    rank: dict[str, int] = {}
    for i, v in enumerate(preferred):
        rank.setdefault(v, i)
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), v))


def failed(models: pd.DataFrame, model_id: str) -> bool:
    """The model is below its accuracy floor (``passed`` is False; NA counts as not failed)."""
    value = models.at[model_id, "passed"] if "passed" in models.columns else pd.NA
    return value is not pd.NA and pd.notna(value) and not bool(value)


def final_models(res: Results) -> list[str]:
    """Ids of final models (no ``@epoch``), rows ordered by regime then architecture (the paper's order)."""
    final = res.models[res.models["epoch"].isna()]
    regime_rank = {r: i for i, r in enumerate(order(final["regime"], REGIMES))}
    arch_rank = {a: i for i, a in enumerate(order(final["arch"], ARCHS))}
    return sorted(final.index, key=lambda m: (regime_rank[final.at[m, "regime"]], arch_rank[final.at[m, "arch"]], m))


def regularizer_order(cells: pd.DataFrame) -> list[str]:
    """The regularizers present in ``cells``, in the paper's column order."""
    return order(cells["regularizer"], REGULARIZERS)
