"""Is a trained model data? Accuracy floors and calibration targets (protocol 9).

A model that did not learn (the same embedded profile once trained AT VGG16 to
76.6% clean on one CPU and to 13.2%, chance, on another) says nothing about
its invariances. Every model is checked against bounds for its *kind*:

============  ======================================  ==========================
kind          regimes                                 accuracy that is checked
============  ======================================  ==========================
standard      standard, standard-simclraug            clean (and robust_max)
robust        adversarial, adversarial-noaug,         clean and robust
              trades, mart
contrastive   simclr, simclr-nocolor, simclr-adv      the linear probe
============  ======================================  ==========================

Bounds are in percent: ``clean``, ``robust`` and ``probe`` are minimums,
``robust_max`` a maximum (a standard model should not be robust).
``evaluation.floor`` holds the floors a model must reach to be data;
``calibration.targets`` the stricter targets ``iri calibrate`` checks a
profile against.
"""

from __future__ import annotations

import math

KINDS = ("standard", "robust", "contrastive")
ROBUST_REGIMES = ("adversarial", "adversarial-noaug", "trades", "mart")
CONTRASTIVE_REGIMES = ("simclr", "simclr-nocolor", "simclr-adv")
# bound key -> (metric in percent, minimum?)
BOUNDS = {"clean": ("clean", True), "robust": ("robust", True), "probe": ("probe", True),
          "robust_max": ("robust", False)}


def model_kind(regime: str) -> str:
    """``standard``, ``robust`` or ``contrastive``: which bounds a regime is checked against."""
    if regime in CONTRASTIVE_REGIMES:
        return "contrastive"
    return "robust" if regime in ROBUST_REGIMES else "standard"


def accuracies(metrics: dict) -> dict[str, float]:
    """``clean``, ``robust`` and ``probe`` accuracy in percent from an evaluation or
    metrics JSON (fractions: ``clean_acc``, ``robust_acc``, ``probe_test_acc``); NaN when absent."""
    def pct(key: str) -> float:
        value = metrics.get(key)
        return 100.0 * float(value) if value is not None else math.nan

    return {"clean": pct("clean_acc"), "robust": pct("robust_acc"), "probe": pct("probe_test_acc")}


def check(acc: dict[str, float], bounds: dict) -> list[str]:
    """Every bound ``acc`` misses, as readable reasons (empty: all met).

    Args:
        acc: ``{"clean", "robust", "probe"}`` in percent (:func:`accuracies`).
        bounds: ``{"clean": 60, "robust": 25, "probe": 40, "robust_max": 10}``, any subset.

    A missing accuracy (NaN) misses every bound on it.
    """
    reasons = []
    for key, limit in bounds.items():
        metric, is_min = BOUNDS[key]
        value = acc.get(metric, math.nan)
        if math.isnan(value):
            reasons.append(f"{metric} accuracy unknown (bound {limit:g}%)")
        elif is_min and value < limit:
            reasons.append(f"{metric} {value:.1f}% < {limit:g}%")
        elif not is_min and value > limit:
            reasons.append(f"{metric} {value:.1f}% > {limit:g}%")
    return reasons


def floor_check(metrics: dict, regime: str, floors: dict) -> dict:
    """A model's validity under ``evaluation.floor``: ``{"kind", "floor", "passed", "reasons"}``."""
    kind = model_kind(regime)
    reasons = check(accuracies(metrics), floors[kind])
    return {"kind": kind, "floor": floors[kind], "passed": not reasons, "reasons": reasons}


def failure_line(failed: dict[str, str]) -> str:
    """One line naming each failed model and why (``{"vgg16-adversarial": "clean 13.2% < 50%"}``),
    e.g. for the end of a run."""
    return ("models below their accuracy floor (evaluation.floor) are not data: "
            + "; ".join(f"{m} ({why})" for m, why in sorted(failed.items()))
            + ". Retrain them (see docs/calibration.md) or set report.allow_failed: true to accept the run.")
