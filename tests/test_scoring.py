"""Alignment scores on hand-built cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iri_alignment.proxies import get_proxy, pairwise
from iri_alignment.scoring import (
    bootstrap_ci,
    clustering,
    clustering_triplets,
    count_ties,
    null_two_afc,
    summarise,
    summarise_over_proxies,
    two_afc,
)

# --------------------------------------------------------------------- 2AFC

D_TARGET = [0.1, 0.5, 0.3, 0.3, 0.7]
D_SEED = [0.2, 0.4, 0.3, 0.3 + 1e-9, 0.7]


def test_two_afc_known_outcomes_and_tie_policies():
    np.testing.assert_array_equal(two_afc(D_TARGET, D_SEED), [1, 0, 0.5, 1, 0.5])
    np.testing.assert_array_equal(two_afc(D_TARGET, D_SEED, ties="aligned"), [1, 0, 1, 1, 1])
    np.testing.assert_array_equal(two_afc(D_TARGET, D_SEED, atol=1e-6), [1, 0, 0.5, 0.5, 0.5])
    assert count_ties(D_TARGET, D_SEED) == 2
    assert count_ties(D_TARGET, D_SEED, atol=1e-6) == 3


def test_two_afc_accepts_tensors_and_rejects_bad_input():
    out = two_afc(torch.tensor(D_TARGET), torch.tensor(D_SEED, dtype=torch.float64))
    assert isinstance(out, np.ndarray) and out.shape == (5,)
    with pytest.raises(ValueError, match="ties"):
        two_afc(D_TARGET, D_SEED, ties="coin")
    with pytest.raises(ValueError, match="NaN"):
        two_afc([0.1, float("nan")], [0.2, 0.3])
    with pytest.raises(ValueError, match="shape"):
        two_afc([0.1, 0.2], [0.1])


# --------------------------------------------------------------------- clustering

TRIPLETS = np.array([[0, 1, 2], [1, 0, 3], [0, 2, 4], [3, 4, 0], [1, 2, 4]])
DISTANCES = np.array(
    [
        [0.1, 0.5, 0.9],  # own (col 0) strictly nearest      -> 1
        [0.2, 0.1, 0.3],  # another candidate nearer          -> 0
        [0.2, 0.2, 0.5],  # own (col 1) tied with one other   -> 1/2
        [0.2, 0.2, 0.2],  # three-way tie                     -> 1/3
        [0.1, 0.1, 0.5],  # others tie at the minimum, own not -> 0
    ]
)


def test_clustering_known_outcomes_with_ties():
    np.testing.assert_allclose(clustering(DISTANCES, TRIPLETS), [1, 0, 0.5, 1 / 3, 0])
    near_tie = DISTANCES.copy()
    near_tie[2, 1] += 1e-9  # row 2's own target (column 1) now a hair farther than column 0
    np.testing.assert_allclose(clustering(near_tie, TRIPLETS)[2], 0.0)  # own 1e-9 farther: a miss
    np.testing.assert_allclose(clustering(near_tie, TRIPLETS, atol=1e-6)[2], 0.5)
    own = np.array([1, 3, 4, 4, 2])  # the same rows read with other own targets
    np.testing.assert_allclose(clustering(DISTANCES, TRIPLETS, own_index=own), [0, 0, 0, 1 / 3, 0.5])


def test_clustering_rejects_rows_without_exactly_one_own_target():
    with pytest.raises(ValueError, match="exactly once"):
        clustering(DISTANCES[:2], np.array([[0, 1, 2], [0, 2, 3]]))
    with pytest.raises(ValueError, match="exactly once"):
        clustering(DISTANCES[:1], np.array([[0, 0, 2]]))
    with pytest.raises(ValueError, match="shape"):
        clustering(DISTANCES, TRIPLETS[:, :2])


def test_clustering_of_random_distances_is_at_chance():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 300)
    triplets = clustering_triplets(labels, seed=0)
    assert abs(clustering(rng.random(triplets.shape), triplets).mean() - 1 / 3) < 0.02


LABELS = np.repeat(np.arange(10), 4)


def test_triplet_properties():
    trip = clustering_triplets(LABELS, seed=0)
    assert trip.shape == (40, 3) and trip.dtype == np.int64
    own = trip == np.arange(40)[:, None]
    assert (own.sum(1) == 1).all()
    assert set(np.flatnonzero(own) % 3) == {0, 1, 2}  # the own target's column is shuffled
    others = trip[~own].reshape(40, 2)
    other_labels = LABELS[others]
    assert (other_labels != LABELS[:, None]).all()
    assert (other_labels[:, 0] != other_labels[:, 1]).all()


def test_triplets_are_deterministic_by_seed():
    np.testing.assert_array_equal(clustering_triplets(LABELS, seed=7), clustering_triplets(LABELS, seed=7))
    assert not np.array_equal(clustering_triplets(LABELS, seed=7), clustering_triplets(LABELS, seed=8))


def test_triplets_with_too_few_classes():
    labels = np.array([0, 0, 0, 1, 1, 1])  # one other class: two distinct targets of it
    trip = clustering_triplets(labels, seed=0)
    own = trip == np.arange(6)[:, None]
    others = trip[~own].reshape(6, 2)
    assert (labels[others] != labels[:, None]).all()
    assert (others[:, 0] != others[:, 1]).all()
    with pytest.raises(ValueError, match="other classes"):
        clustering_triplets(np.array([0, 0, 1]), seed=0)


def test_clustering_with_a_proxy_end_to_end():
    """IRIs that are slightly perturbed targets cluster with their own target."""
    gen = torch.Generator().manual_seed(0)
    labels = np.repeat(np.arange(5), 2)
    targets = torch.rand(10, 3, 8, 8, generator=gen)
    iris = (targets + 0.01 * torch.randn(targets.shape, generator=gen)).clamp(0, 1)
    trip = clustering_triplets(labels, seed=0)
    d = pairwise(get_proxy("l2"), iris, targets, index=torch.as_tensor(trip))
    np.testing.assert_array_equal(clustering(d, trip), np.ones(10))


# --------------------------------------------------------------------- summaries


def test_bootstrap_interval_contains_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small = (rng.random(20) < 0.6).astype(float)
    large = (rng.random(2000) < 0.6).astype(float)
    lo_s, hi_s = bootstrap_ci(small, n_resamples=2000, seed=0)
    lo_l, hi_l = bootstrap_ci(large, n_resamples=2000, seed=0)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    assert bootstrap_ci(small, 500, seed=3) == bootstrap_ci(small, 500, seed=3)
    lo_90, hi_90 = bootstrap_ci(small, n_resamples=2000, seed=0, level=0.9)
    assert lo_s <= lo_90 and hi_90 <= hi_s and (lo_s, hi_s) != (lo_90, hi_90)
    assert bootstrap_ci([0.5], 100, seed=0) == (0.5, 0.5)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([], 100, seed=0)


def test_summarise_in_percent():
    s = summarise([1, 0, 1, 1], n_resamples=500, seed=0)
    assert s["mean"] == 75.0 and s["n"] == 4
    assert s["std"] == pytest.approx(50.0)  # sample std of (1, 0, 1, 1)
    assert 0 <= s["ci_low"] <= 75.0 <= s["ci_high"] <= 100
    assert np.isnan(summarise([1.0], n_resamples=10)["std"])


def test_summarise_over_proxies():
    s = summarise_over_proxies({"lpips-alex": 10.0, "lpips-vgg": 20.0, "lpips-alex-base": 30.0, "lpips-vgg-base": 40.0})
    assert s == {"mean": 25.0, "std": pytest.approx(np.sqrt(125.0)), "n": 4}
    assert summarise_over_proxies({"ssim": 12.5}) == {"mean": 12.5, "std": 0.0, "n": 1}
    with pytest.raises(ValueError):
        summarise_over_proxies({})


def test_null_two_afc_on_hand_built_distances():
    # Row 0: own target in column 1; IRI nearer its own target (1.0) than the seed (5.0),
    # farther from both wrong targets (7.0, 9.0) than from the seed: null 0, margin 1.
    # Row 1: a smooth IRI near every target (2.0 each) and far from the seed (6.0):
    # 2AFC 1, null 1, margin 0 -- leaving the seed is not likeness to the target.
    # Row 2: one wrong target ties with the seed (4.0), the other is nearer (1.0): null (0.5 + 1) / 2.
    triplets = np.array([[1, 0, 2], [0, 1, 2], [2, 0, 1]])
    d = np.array([[7.0, 1.0, 9.0], [2.0, 2.0, 2.0], [3.0, 4.0, 1.0]])
    d_seed = np.array([5.0, 6.0, 4.0])
    own = d[np.arange(3), [1, 1, 0]]
    own_afc = two_afc(own, d_seed)
    null = null_two_afc(d, triplets, d_seed)
    np.testing.assert_allclose(null, [0.0, 1.0, 0.75])
    np.testing.assert_allclose(own_afc - null, [1.0, 0.0, 0.25])
    np.testing.assert_allclose(null_two_afc(d, triplets, d_seed, ties="aligned"), [0.0, 1.0, 1.0])


def test_null_two_afc_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        null_two_afc(np.ones((3, 3)), np.zeros((3, 2), dtype=int), np.ones(3))
