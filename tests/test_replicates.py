"""Training replicates (study.replicates): the jobs they add, and the report pooled over them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iri_alignment import plan
from iri_alignment.params import load_params
from iri_alignment.reporting import build_report, load_results

N = 10  # targets per IRI set
TARGETS = [5 * i + 1 for i in range(N)]
#: aligned targets (ms-ssim 2AFC, reg-free) per (regime, replicate): the first k of N
ALIGNED = {("adversarial", 0): 6, ("adversarial", 1): 8, ("adversarial", 2): 4,
           ("standard", 0): 1, ("standard", 1): 0, ("standard", 2): 2}
CLEAN = {("adversarial", 0): 0.80, ("adversarial", 1): 0.70, ("adversarial", 2): 0.75,
         ("standard", 0): 0.99, ("standard", 1): 0.97, ("standard", 2): 0.98}


def first(k: int) -> np.ndarray:
    return np.r_[np.ones(k), np.zeros(N - k)]


def write_replicate(root: Path, arch: str, regime: str, replicate: int, *, clean: float | None = None) -> None:
    mid = plan.model_id(arch, regime, replicate=replicate)
    model = {"dataset": "shapes", "arch": arch, "regime": regime, "replicate": replicate, "epoch": 5}
    k = ALIGNED[(regime, replicate)]
    table = pd.DataFrame({"index": range(N), "target_index": TARGETS, "label": [i % 5 for i in range(N)],
                          "rep_loss": 0.01, "converged": True, "proxy": "ms-ssim", "2afc": first(k),
                          "2afc_null": np.zeros(N), "2afc_margin": first(k), "clustering": first(k // 2),
                          "rep_other_min": 0.5, "rep_specific": True, "optimised_against": False})
    (root / "scores" / mid).mkdir(parents=True)
    table.to_csv(root / "scores" / mid / "reg-free.csv", index=False)
    (root / "scores" / mid / "reg-free.json").write_text(json.dumps({"model": model, "regularizer": "reg-free"}))
    metrics = {**model, "width": 0.125, "eps": 1.5, "clean_acc": clean if clean is not None else CLEAN[(regime, replicate)],
               "robust_acc": 0.5 if regime == "adversarial" else 0.0}
    (root / "models" / mid).mkdir(parents=True)
    (root / "models" / mid / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def replicated(tmp_path) -> Path:
    root = tmp_path / "results"
    for regime in ("adversarial", "standard"):
        for r in range(3):
            write_replicate(root, "resnet18", regime, r)
    return root


def report(tmp_path: Path, root: Path, **kw) -> dict:
    args = {"structural_proxy": "ms-ssim", "proxies": ["ms-ssim"], "permutations": 500, "bootstrap": 200, **kw}
    return build_report(root, tmp_path / "tables", tmp_path / "figures", **args)


def test_replicate_ids_and_jobs():
    assert plan.model_id("vgg16", "adversarial", replicate=2) == "vgg16-adversarial-r2"
    assert plan.model_id("resnet18", "simclr", 4, replicate=1) == "resnet18-simclr-r1@0004"
    assert plan.parse_model_id("resnet18-adversarial-noaug-r12") == ("resnet18", "adversarial-noaug", None)
    assert plan.replicate_of("resnet18-adversarial-noaug-r12") == 12
    assert plan.replicate_of("resnet18-standard") == 0
    assert plan.base_model_id("resnet18-simclr-r1@0004") == "resnet18-simclr@0004"
    with pytest.raises(ValueError, match="not a model id"):
        plan.parse_model_id("resnet18-standard-r0")  # replicate 0 has no suffix: one name per model
    assert plan.checkpoint_path("results", "resnet18-simclr-r2@0004") == Path("results/models/resnet18-simclr-r2/epoch-0004.pt")

    params = load_params("params.yaml", "smoke")
    one = plan.trained_model_ids(params)
    params["study"]["replicates"] = 3
    three = plan.trained_model_ids(params)
    assert three[:len(one)] == one  # raising the count adds jobs and renames none
    assert len(three) == 3 * len(one) and "resnet18-adversarial-r2" in three
    params["inversion"]["replicates"] = {"human-aligned": 1}
    jobs = plan.inversion_jobs(params)
    assert ("resnet18-standard-r2", "reg-free") in jobs
    assert ("resnet18-standard", "human-aligned") in jobs
    assert ("resnet18-standard-r1", "human-aligned") not in jobs


def test_training_seed_and_hash_follow_the_replicate():
    from iri_alignment.training import run_hash, training_seed

    params = load_params("params.yaml", "smoke")
    assert [training_seed(params, r) for r in range(3)] == [0, 1, 2]
    hashes = {run_hash(params, "shapes", "resnet18", "standard", r) for r in range(3)}
    assert len(hashes) == 3
    fp32 = run_hash(params, "shapes", "resnet18", "standard")
    params["study"]["precision"] = "bf16"
    assert run_hash(params, "shapes", "resnet18", "standard") != fp32
    assert plan.inversion_hash(params, "reg-free") != plan.inversion_hash(load_params("params.yaml", "smoke"), "reg-free")


def test_results_pool_over_replicates(replicated):
    res = load_results(replicated)
    assert sorted(res.models.index) == ["resnet18-adversarial", "resnet18-standard"]
    at = res.models.loc["resnet18-adversarial"]
    assert at["n_replicates"] == 3
    assert at["clean_acc"] == pytest.approx(75.0)
    assert at["clean_acc_std"] == pytest.approx(np.std([80, 70, 75], ddof=1))
    assert sorted(res.replicates.index) == sorted(plan.model_id("resnet18", g, replicate=r)
                                                 for g in ("adversarial", "standard") for r in range(3))
    part = res.outcomes[(res.outcomes["model_id"] == "resnet18-adversarial")]
    assert sorted(part["replicate"].unique()) == [0, 1, 2] and len(part) == 3 * N
    assert res.sets.loc[("resnet18-adversarial", "reg-free"), "n_iris"] == 3 * N


def test_cells_and_tables_show_the_spread_between_replicates(tmp_path, replicated):
    out = report(tmp_path, replicated)
    cells = pd.read_csv(tmp_path / "tables" / "cells.csv")
    row = cells[(cells["model_id"] == "resnet18-adversarial") & (cells["task"] == "2afc") & (cells["proxy"] == "ms-ssim")].iloc[0]
    means = [100 * ALIGNED[("adversarial", r)] / N for r in range(3)]
    assert row["mean"] == pytest.approx(np.mean(means))
    assert row["replicate_std"] == pytest.approx(np.std(means, ddof=1))
    assert row["n"] == 3 * N and row["replicates"] == 3
    table = (tmp_path / "tables" / "alignment_by_regularizer.md").read_text()
    assert f"3 runs ± {np.std(means, ddof=1):.2f}" in table
    assert "std over the k replicates' own means" in table
    assert out["failed"] == {}


def test_significance_pairs_targets_within_a_replicate(tmp_path, replicated):
    report(tmp_path, replicated)
    tests = pd.read_csv(tmp_path / "tables" / "significance.csv")
    at = tests[(tests["family"] == "augmentation") & (tests["measure"] == "2afc_margin")].iloc[0]
    assert at["n_targets"] == 3 * N
    diff = np.mean([(ALIGNED[("adversarial", r)] - ALIGNED[("standard", r)]) / N for r in range(3)])
    assert at["effect_pp"] == pytest.approx(100 * diff)
    # pooled McNemar: AT-only aligned targets per replicate are k_AT - k_std (nested first-k sets), none the other way
    assert at["test"] == "exact McNemar"
    assert at["p_value"] < 0.001
    per = pd.read_csv(tmp_path / "tables" / "significance_by_replicate.csv")
    margin = per[(per["family"] == "augmentation") & (per["measure"] == "2afc_margin")]
    assert sorted(margin["replicate"]) == [0, 1, 2] and (margin["n_targets"] == N).all()
    assert all(p > at["p_value"] for p in margin["p_value"])  # each replicate alone has a third of the pairs
    summary = (tmp_path / "tables" / "summary.md").read_text()
    assert "pooled" in summary and "each replicate alone" in summary
    lines = [line for line in summary.splitlines() if "2afc_margin" in line and "adversarial vs standard" in line]
    assert {line.split("|")[3].strip() for line in lines} == {"pooled", "0", "1", "2"}


def test_one_failed_replicate_fails_the_model(tmp_path):
    root = tmp_path / "results"
    for regime in ("adversarial", "standard"):
        for r in range(3):
            write_replicate(root, "resnet18", regime, r, clean=0.12 if (regime, r) == ("adversarial", 2) else None)
    out = report(tmp_path, root, floors={"standard": {"clean": 60}, "robust": {"clean": 50}})
    assert list(out["failed"]) == ["resnet18-adversarial"]
    assert "replicate 2: clean" in out["failed"]["resnet18-adversarial"]
    validity = (tmp_path / "tables" / "validity.md").read_text()
    assert "resnet18-adversarial-r2" in validity and "FAILED" in validity
    assert validity.count("| passed") == 5  # the other five trained models
