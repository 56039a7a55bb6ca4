"""Alignment scores from proxy distances (protocol, section 6).

Pure functions on arrays or tensors (any device; results are NumPy): no file
IO, no model. Per-target outcomes are floats in [0, 1] (1 = aligned, 0.5 = a
tie split in half); :func:`summarise` turns them into percentages.

* **2AFC** (:func:`two_afc`): IRI ``x'`` of target ``x`` from seed ``x0`` is
  aligned when ``d(x', x) < d(x', x0)``.
* **Clustering** (:func:`clustering_triplets`, :func:`clustering`): the IRI is
  the query, the candidates are its own target and two targets of other
  classes; it is correct when its own target is the nearest. Chance is 1/3.
* **The null of 2AFC** (:func:`null_two_afc`, protocol 9): the same 2AFC with
  a *wrong* target (the other-class candidates of the clustering triplet) in
  place of the own one. A smooth image is closer to any target than to a
  noise seed, so 2AFC minus its null (the *margin*) is the target-specific part.
* **Summaries**: :func:`bootstrap_ci` (percentile bootstrap over targets),
  :func:`summarise` (one proxy), :func:`summarise_over_proxies` (mean +- std
  over proxies, the paper's cells).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

TIE_POLICIES = ("half", "aligned")
Ties = Literal["half", "aligned"]


def _as_array(values: np.ndarray | torch.Tensor | list, name: str, ndim: int) -> np.ndarray:
    """``values`` as a float64 NumPy array of ``ndim`` dimensions with no NaN."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} holds NaN: a NaN distance would silently count as a miss")
    return arr


def _is_tie(a: np.ndarray, b: np.ndarray, atol: float) -> np.ndarray:
    """Elementwise ``|a - b| <= atol`` (exact equality when ``atol`` is 0)."""
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    return np.abs(a - b) <= atol


def two_afc(
    d_target: np.ndarray | torch.Tensor,
    d_seed: np.ndarray | torch.Tensor,
    ties: Ties = "half",
    atol: float = 0.0,
) -> np.ndarray:
    r"""2AFC outcome of every IRI.

    .. math::
        o_i = \begin{cases}
            1 & d(x'_i, x_i) < d(x'_i, x_0) \text{ (and not a tie)} \\
            t & |d(x'_i, x_i) - d(x'_i, x_0)| \le \text{atol} \\
            0 & \text{otherwise}
        \end{cases}

    with :math:`t = 1/2` for ``ties="half"`` (**decision**: a coin flip between
    two equally distant images) and :math:`t = 1` for ``ties="aligned"``
    (faithful: the authors counted a tie as aligned).

    Args:
        d_target: (N,) distances ``d(x', x)`` from each IRI to its target.
        d_seed: (N,) distances ``d(x', x0)`` from each IRI to its seed.
        ties: ``"half"`` (default) or ``"aligned"``.
        atol: absolute tolerance under which two distances tie (default 0: exact equality).

    Returns:
        (N,) float outcomes in {0, t, 1}.

    Raises:
        ValueError: shapes differ, a NaN distance, unknown ``ties``, negative ``atol``.
    """
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties must be one of {TIE_POLICIES}, got {ties!r}")
    dt, ds = _as_array(d_target, "d_target", 1), _as_array(d_seed, "d_seed", 1)
    if dt.shape != ds.shape:
        raise ValueError(f"d_target {dt.shape} and d_seed {ds.shape} differ in shape")
    tie_value = 0.5 if ties == "half" else 1.0
    return np.where(_is_tie(dt, ds, atol), tie_value, (dt < ds).astype(np.float64))


def count_ties(d_target: np.ndarray | torch.Tensor, d_seed: np.ndarray | torch.Tensor, atol: float = 0.0) -> int:
    """Number of IRIs whose 2AFC distances tie (``|d_target - d_seed| <= atol``); arguments as :func:`two_afc`."""
    dt, ds = _as_array(d_target, "d_target", 1), _as_array(d_seed, "d_seed", 1)
    if dt.shape != ds.shape:
        raise ValueError(f"d_target {dt.shape} and d_seed {ds.shape} differ in shape")
    return int(_is_tie(dt, ds, atol).sum())


def null_two_afc(
    d_query_candidates: np.ndarray | torch.Tensor,
    triplets: np.ndarray | torch.Tensor,
    d_seed: np.ndarray | torch.Tensor,
    ties: Ties = "half",
    own_index: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    r"""Wrong-target 2AFC of every IRI: its 2AFC against each other-class candidate, averaged.

    .. math::
        n_i = \frac{1}{|W_i|} \sum_{j \in W_i} \text{2AFC}(d(x'_i, x_j), d(x'_i, x_0))

    with :math:`W_i` the candidates of row ``i`` other than its own target.
    An IRI that only left its seed (smooth, but like no target in particular)
    scores the same against wrong targets as against its own: margin
    :math:`o_i - n_i \approx 0`.

    Args:
        d_query_candidates: (N, K) distances from IRI i to candidate ``triplets[i, j]``.
        triplets: (N, K) candidate target indices (:func:`clustering_triplets`).
        d_seed: (N,) distances from each IRI to its seed.
        ties: as :func:`two_afc` (default ``"half"``).
        own_index: (N,) index of each IRI's own target (default ``arange(N)``).

    Returns:
        (N,) floats in [0, 1].
    """
    d = _as_array(d_query_candidates, "d_query_candidates", 2)
    trip = np.asarray(triplets.detach().cpu() if isinstance(triplets, torch.Tensor) else triplets)
    ds = _as_array(d_seed, "d_seed", 1)
    if trip.shape != d.shape or ds.shape != (len(d),):
        raise ValueError(f"triplets {trip.shape}, distances {d.shape} and d_seed {ds.shape} do not match")
    own = np.arange(len(d)) if own_index is None else np.asarray(own_index)
    wrong = trip != own[:, None]
    if (wrong.sum(1) == 0).any():
        raise ValueError("every row needs at least one candidate other than its own target")
    outcomes = np.stack([two_afc(d[:, j], ds, ties) for j in range(d.shape[1])], axis=1)
    return (outcomes * wrong).sum(1) / wrong.sum(1)


def clustering_triplets(labels: np.ndarray | torch.Tensor | list, seed: int, n_candidates: int = 3) -> np.ndarray:
    """Candidate targets of every IRI for the clustering task (also exported for human raters).

    IRI ``i`` was generated from target ``i``. Row ``i`` holds ``i`` itself and
    ``n_candidates - 1`` targets of classes other than ``labels[i]``, in a
    random column order. The other targets come from distinct classes (a class
    drawn uniformly without replacement, then one of its targets uniformly)
    when there are enough other classes; otherwise they are distinct targets
    drawn uniformly from all other-class targets.

    Rows are drawn in order ``i = 0, 1, ..`` from one
    ``np.random.default_rng(seed)``, so the triplets depend only on
    ``labels``, ``seed`` and ``n_candidates``.

    Args:
        labels: (N,) integer class of every target.
        seed: seed of the generator.
        n_candidates: candidates per row, own target included (default 3; chance 1/n_candidates).

    Returns:
        (N, n_candidates) int64 target indices.

    Raises:
        ValueError: ``n_candidates < 2``, or some target has fewer than
            ``n_candidates - 1`` targets of other classes.
    """
    labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if n_candidates < 2:
        raise ValueError(f"n_candidates must be >= 2, got {n_candidates}")
    k = n_candidates - 1
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    rows = np.empty((len(labels), n_candidates), dtype=np.int64)
    for i, own in enumerate(labels):
        other_classes = classes[classes != own]
        if len(other_classes) >= k:
            picked = rng.choice(other_classes, size=k, replace=False)
            others = [rng.choice(members[c]) for c in picked]
        else:
            pool = np.flatnonzero(labels != own)
            if len(pool) < k:
                raise ValueError(f"target {i} (class {own}) has {len(pool)} targets of other classes, needs {k}")
            others = list(rng.choice(pool, size=k, replace=False))
        rows[i] = rng.permutation(np.array([i, *others], dtype=np.int64))
    return rows


def clustering(
    d_query_candidates: np.ndarray | torch.Tensor,
    triplets: np.ndarray | torch.Tensor,
    own_index: np.ndarray | torch.Tensor | None = None,
    atol: float = 0.0,
) -> np.ndarray:
    r"""Clustering outcome of every IRI.

    With :math:`D_{ij}` the distance from IRI :math:`i` to candidate
    ``triplets[i, j]``, :math:`m_i = \min_j D_{ij}`, :math:`o` the own
    target's column and :math:`T_i = \{j : D_{ij} \le m_i + \text{atol}\}` the
    candidates tied at the minimum,

    .. math::
        o_i = \frac{[o \in T_i]}{|T_i|},

    i.e. 1 when the own target is strictly nearest, 0 when another candidate
    is, and a fair share :math:`1/k` of a :math:`k`-way tie that includes the
    own target. Chance is 1/3 with three candidates.

    Args:
        d_query_candidates: (N, K) distances, column j for candidate ``triplets[:, j]``
            (e.g. ``proxies.pairwise(proxy, iris, targets, index=triplets)``).
        triplets: (N, K) candidate target indices (:func:`clustering_triplets`).
        own_index: (N,) index of each IRI's own target (default None: ``arange(N)``,
            IRI i from target i). It must appear exactly once in its row.
        atol: distances within ``atol`` of the minimum tie with it (default 0: exact).

    Returns:
        (N,) float outcomes in [0, 1].

    Raises:
        ValueError: shapes differ, NaN distances, or an own target absent or repeated in its row.
    """
    d = _as_array(d_query_candidates, "d_query_candidates", 2)
    trip = np.asarray(triplets.detach().cpu() if isinstance(triplets, torch.Tensor) else triplets)
    if trip.shape != d.shape:
        raise ValueError(f"triplets {trip.shape} and distances {d.shape} differ in shape")
    if own_index is None:
        own = np.arange(len(d))
    else:
        own = np.asarray(own_index.detach().cpu() if isinstance(own_index, torch.Tensor) else own_index)
        if own.shape != (len(d),):
            raise ValueError(f"own_index must be ({len(d)},), got {own.shape}")
    is_own = trip == own[:, None]
    bad = np.flatnonzero(is_own.sum(1) != 1)
    if len(bad):
        raise ValueError(f"rows {bad[:5].tolist()} do not hold their own target exactly once")
    at_min = _is_tie(d, d.min(axis=1, keepdims=True), atol)
    return (at_min & is_own).sum(1) / at_min.sum(1)


def bootstrap_ci(
    values: np.ndarray | torch.Tensor, n_resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    r"""Percentile bootstrap interval of the mean over targets.

    Draw ``n_resamples`` resamples of the N values with replacement (from
    ``np.random.default_rng(seed)``), take each resample's mean
    :math:`\bar v^{*b}`, and return the :math:`(1-\text{level})/2` and
    :math:`(1+\text{level})/2` quantiles of :math:`\{\bar v^{*b}\}` (NumPy's
    linear interpolation).

    Args:
        values: (N,) per-target values (e.g. outcomes in [0, 1]), N >= 1.
        n_resamples: bootstrap resamples B (>= 1).
        seed: seed of the generator.
        level: coverage in (0, 1) (default 0.95).

    Returns:
        ``(low, high)`` in the units of ``values``.
    """
    v = _as_array(values, "values", 1)
    if len(v) == 0:
        raise ValueError("cannot bootstrap an empty set of values")
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n_resamples >= 1 and 0 < level < 1, got {n_resamples} and {level}")
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // len(v))  # resamples per draw, to bound memory at ~8 MB
    means = np.concatenate(
        [
            v[rng.integers(0, len(v), size=(min(chunk, n_resamples - start), len(v)))].mean(1)
            for start in range(0, n_resamples, chunk)
        ]
    )
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def summarise(
    outcomes: np.ndarray | torch.Tensor, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float | int]:
    """One table cell from per-target outcomes, in percent.

    Args:
        outcomes: (N,) per-target outcomes in [0, 1] (:func:`two_afc`, :func:`clustering`).
        n_resamples: bootstrap resamples for the interval (default 1000; params ``scoring.bootstrap``).
        seed: bootstrap seed (default 0).
        level: interval coverage (default 0.95).

    Returns:
        ``{"mean", "std", "n", "ci_low", "ci_high"}``: mean and sample standard
        deviation (ddof 1; NaN when n = 1) of the outcomes over targets and the
        bootstrap interval of the mean, all times 100; n is the number of targets.
    """
    v = _as_array(outcomes, "outcomes", 1)
    low, high = bootstrap_ci(v, n_resamples, seed, level)
    return {
        "mean": 100.0 * float(v.mean()),
        "std": 100.0 * float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
        "n": int(len(v)),
        "ci_low": 100.0 * low,
        "ci_high": 100.0 * high,
    }


def summarise_over_proxies(per_proxy: Mapping[str, float]) -> dict[str, float | int]:
    """The paper's cell: mean +- std of one score over proxies (e.g. the four LPIPS variants).

    Args:
        per_proxy: proxy name -> score (e.g. ``summarise(...)["mean"]``, in percent).

    Returns:
        ``{"mean", "std", "n"}``: mean and population standard deviation (ddof 0,
        NumPy's default, over the fixed set of proxies; 0 for one proxy) of the
        scores, in their units, and the number of proxies.
    """
    if not per_proxy:
        raise ValueError("no proxies to summarise")
    v = _as_array(list(per_proxy.values()), "per_proxy", 1)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=0)), "n": int(len(v))}
