"""Floors and targets per kind of model."""

import math

from iri_alignment import validity


def test_kinds_and_bounds():
    assert [validity.model_kind(r) for r in ("standard", "standard-simclraug", "mart", "adversarial-noaug", "simclr-adv")] \
        == ["standard", "standard", "robust", "robust", "contrastive"]
    acc = validity.accuracies({"clean_acc": 0.132, "robust_acc": 0.12})
    assert math.isclose(acc["clean"], 13.2) and math.isnan(acc["probe"])
    assert validity.check(acc, {"clean": 50, "robust": 10}) == ["clean 13.2% < 50%"]
    assert validity.check(acc, {"robust_max": 10}) == ["robust 12.0% > 10%"]
    assert validity.check(acc, {"probe": 40}) == ["probe accuracy unknown (bound 40%)"]
    assert validity.check(acc, {"clean": 13.0}) == []


def test_floor_check_and_the_failure_line():
    floors = {"standard": {"clean": 60}, "robust": {"clean": 50, "robust": 25}, "contrastive": {"probe": 40}}
    at = validity.floor_check({"clean_acc": 0.132, "robust_acc": 0.12}, "adversarial", floors)
    assert at == {"kind": "robust", "floor": floors["robust"], "passed": False,
                  "reasons": ["clean 13.2% < 50%", "robust 12.0% < 25%"]}
    assert validity.floor_check({"probe_test_acc": 0.77}, "simclr", floors)["passed"]
    line = validity.failure_line({"vgg16-adversarial": "; ".join(at["reasons"])})
    assert "vgg16-adversarial (clean 13.2% < 50%; robust 12.0% < 25%)" in line and "allow_failed" in line
