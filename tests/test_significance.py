"""Significance tests on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iri_alignment.significance import (
    COLUMNS,
    holm,
    mcnemar_exact,
    paired_comparison,
    run_tests,
    sign_flip_test,
    significance_markdown,
    write_significance,
)


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # capped at 1; NaN (a test not run) stays NaN and does not count in m
    np.testing.assert_allclose(holm([0.5, np.nan, 0.4]), [0.8, np.nan, 0.8])
    np.testing.assert_allclose(holm([0.9, 0.6]), [1.0, 1.0])
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError):
        holm([1.5])


def test_mcnemar_on_a_known_discordant_table():
    # 9 targets aligned only under a, 1 only under b, 5 under both, 3 under neither:
    # p = 2 * (C(10,9) + C(10,10)) / 2^10 = 22 / 1024
    a = np.r_[np.ones(9), 0, np.ones(5), np.zeros(3)]
    b = np.r_[np.zeros(9), 1, np.ones(5), np.zeros(3)]
    res = mcnemar_exact(a, b)
    assert (res["discordant_a"], res["discordant_b"]) == (9, 1)
    assert res["p_value"] == pytest.approx(22 / 1024)
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(22 / 1024)
    assert mcnemar_exact(a, a)["p_value"] == 1.0  # no discordant pair
    with pytest.raises(ValueError, match="binary"):
        mcnemar_exact(np.array([0.5, 1.0]), np.array([0.0, 1.0]))


def test_sign_flip_exact_values():
    # all 2^5 sign vectors of five +1s: only all-plus and all-minus reach |sum| = 5
    assert sign_flip_test(np.ones(5), permutations=100)["p_value"] == pytest.approx(2 / 32)
    # [1, 1, 1, -1]: |sum| = 2; of 16 sign vectors, 10 reach |sum| >= 2
    res = sign_flip_test(np.array([1.0, 1.0, 1.0, -1.0, 0.0, 0.0]), permutations=100)
    assert res["exact"] and res["p_value"] == pytest.approx(10 / 16) and res["statistic"] == pytest.approx(2 / 6)


def test_sign_flip_identical_outcomes_give_p_one_and_a_large_difference_a_small_p():
    assert sign_flip_test(np.zeros(40), permutations=500)["p_value"] == 1.0
    res = sign_flip_test(np.r_[np.ones(36), 0.5, np.zeros(3)], permutations=999, seed=1)
    assert not res["exact"] and res["p_value"] == pytest.approx(1 / 1000)  # no resample reaches it: (1 + 0) / (1 + B)
    rng = np.random.default_rng(3)
    noise = rng.choice([-1.0, 0.0, 1.0], size=40)
    assert sign_flip_test(noise, permutations=999)["p_value"] > 0.05


def test_monte_carlo_agrees_with_the_exact_test():
    d = np.array([1, 1, 1, 1, 1, 1, 1, 1, -1, -1, 0.5, -0.5])  # 12 non-zero: 4096 sign vectors
    exact = sign_flip_test(d, permutations=4096)
    approx = sign_flip_test(d, permutations=3000, seed=0)
    assert exact["exact"] and not approx["exact"]
    assert approx["p_value"] == pytest.approx(exact["p_value"], abs=0.03)


def test_paired_comparison_chooses_the_test_and_brackets_the_effect():
    rng = np.random.default_rng(0)
    a = (rng.random(60) < 0.8).astype(float)
    b = (rng.random(60) < 0.3).astype(float)
    res = paired_comparison(a, b, permutations=500, bootstrap=500, seed=0)
    assert res["test"] == "exact McNemar" and res["n_targets"] == 60
    assert res["effect_pp"] == pytest.approx(100 * (a - b).mean())
    assert res["ci_low"] < res["effect_pp"] < res["ci_high"]
    assert res["p_value"] < 0.001
    ties = b.copy()
    ties[0] = 0.5
    res = paired_comparison(a, ties, permutations=500, bootstrap=500, seed=0)
    assert res["test"].startswith("sign-flip") and res["discordant_a"] is None
    assert res["ci_low"] <= res["effect_pp"] <= res["ci_high"]
    forced = paired_comparison(a, b, permutations=500, bootstrap=500, seed=0, permutation_only=True)
    assert forced["test"] == "sign-flip permutation (B=500)"


def test_seeded_results_are_reproducible():
    d = np.r_[np.ones(20), -np.ones(12), np.full(8, 0.5)]
    assert sign_flip_test(d, 800, seed=5) == sign_flip_test(d, 800, seed=5)
    assert sign_flip_test(d, 800, seed=5)["p_value"] != sign_flip_test(d, 800, seed=6)["p_value"]
    a, b = np.r_[np.ones(30), np.zeros(10)], np.r_[np.zeros(15), np.ones(25)]
    assert paired_comparison(a, b, seed=2, bootstrap=300) == paired_comparison(a, b, seed=2, bootstrap=300)


def outcome_frame(n: int = 20) -> pd.DataFrame:
    """Per-target outcomes: AT aligns the first 15 targets, standard none, SimCLR the first 10;
    VGG16 aligns five fewer; human-aligned two more (with a tie); adversarial none."""
    rows = []
    for arch, minus in (("resnet18", 0), ("vgg16", 5)):
        for regime, k in (("adversarial", 15), ("standard", 0), ("simclr", 10)):
            for reg, extra in (("reg-free", 0), ("human-aligned", 2), ("adversarial", None)):
                kk = 0 if extra is None else max(0, min(n, k - minus + extra))
                out = np.r_[np.ones(kk), np.zeros(n - kk)]
                if reg == "human-aligned":
                    out[-1] = 0.5
                rows += [{"arch": arch, "regime": regime, "regularizer": reg, "target_index": 5 * t, "outcome": o,
                          "optimised_against": reg == "adversarial"} for t, o in enumerate(out)]
    return pd.DataFrame(rows)


def test_run_tests_families_holm_and_sentences():
    table, skipped = run_tests(outcome_frame(), proxy="ms-ssim", permutations=300, bootstrap=300)
    assert list(table.columns) == list(COLUMNS)
    assert list(dict.fromkeys(table["family"])) == ["augmentation", "architecture", "loss", "regularizer"]
    assert (table["family"] == "regularizer").sum() == 6 * 3 and (table["family"] == "loss").sum() == 4
    for family, part in table.groupby("family"):
        np.testing.assert_allclose(part["p_holm"], holm(part["p_value"].to_numpy()))
    at = table[table["comparison"] == "resnet18: adversarial vs standard"].iloc[0]
    assert (at["effect_pp"], at["discordant_a"], at["discordant_b"], at["n_targets"]) == (75.0, 15, 0, 20)
    assert at["significant"] and at["p_holm"] < 0.05
    assert at["sentence"].startswith("On the same 20 targets, adversarially trained ResNet18's reg-free IRIs were judged "
                                      "aligned by ms-ssim 2AFC 75.0 points more often than standard ResNet18's (95% CI")
    assert "exact McNemar on 15 vs 0 discordant targets" in at["sentence"]
    arch = table[table["comparison"] == "adversarial: residual vs non-residual"].iloc[0]
    assert arch["test"].startswith("sign-flip") and arch["effect_pp"] == pytest.approx(25.0)
    ha = table[table["comparison"] == "resnet18-adversarial: reg-free vs human-aligned"].iloc[0]
    assert ha["test"].startswith("sign-flip")  # the tie of 1/2 rules McNemar out
    adv = table[table["comparison"] == "resnet18-adversarial: reg-free vs adversarial"].iloc[0]
    assert "optimised against ms-ssim itself" in adv["sentence"]
    assert skipped == []


def test_run_tests_pairs_by_target_and_skips_with_reasons():
    frame = outcome_frame()
    frame = frame[(frame["arch"] == "resnet18") & (frame["regime"] != "simclr")]
    # the standard model lost its first five targets: pairs use the 15 both sides hold
    frame = frame[~((frame["regime"] == "standard") & (frame["target_index"] < 25))]
    table, skipped = run_tests(frame, proxy="l2", permutations=200, bootstrap=200)
    at = table[table["comparison"] == "resnet18: adversarial vs standard"].iloc[0]
    assert at["n_targets"] == 15 and at["effect_pp"] == pytest.approx(100 * 10 / 15)
    assert any(s.startswith("architecture: adversarial") for s in skipped)
    assert "loss: no simclr model" in skipped
    assert set(table["family"]) == {"augmentation", "regularizer"}
    empty, why = run_tests(frame.iloc[:0], proxy="l2")
    assert empty.empty and why


def test_markdown_groups_by_family(tmp_path):
    table, skipped = run_tests(outcome_frame(), proxy="ms-ssim", permutations=200, bootstrap=200)
    md = significance_markdown(table, ["architecture: none: example"], proxy="ms-ssim", alpha=0.05)
    heads = [line for line in md.splitlines() if line.startswith("## ")]
    assert heads == ["## augmentation, 2AFC (2 tests, Holm over them)", "## architecture, 2AFC (3 tests, Holm over them)",
                     "## loss, 2AFC (4 tests, Holm over them)", "## regularizer, 2AFC (18 tests, Holm over them)",
                     "## Not tested"]
    paths = write_significance(table, skipped, tmp_path, proxy="ms-ssim", alpha=0.05)
    assert [p.name for p in paths] == ["significance.csv", "significance.md"]
    back = pd.read_csv(paths[0])
    assert len(back) == len(table) and back["sentence"].str.startswith("On the same").all()


def test_measures_name_themselves_in_table_and_sentences():
    frame = outcome_frame()
    margin, _ = run_tests(frame.assign(outcome=frame["outcome"] - 0.25), proxy="l2", measure="2afc_margin",
                          permutations=200, bootstrap=200)
    assert (margin["measure"] == "2afc_margin").all()
    assert margin["sentence"].str.contains("beyond its wrong-target null").all()
    md = significance_markdown(margin, [], proxy="l2", alpha=0.05)
    assert "## augmentation, 2AFC margin" in md
    with pytest.raises(ValueError, match="measure must be one of"):
        run_tests(frame, proxy="l2", measure="accuracy")
