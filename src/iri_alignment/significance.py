"""Significance tests on per-target alignment outcomes (protocol, section 7).

Every IRI set of a study inverts the same seeded targets, so two IRI sets
(two models, or two regularizers of one model) give *paired* outcomes: one
per target, matched by ``target_index``. An outcome is one *measure* of the
structural proxy (:data:`MEASURES`): the 2AFC margin (2AFC minus its
wrong-target null, in [-1, 1]: the target-specific part of 2AFC, protocol 9),
clustering (in {0, 1}, chance 1/3), or raw 2AFC (in {0, 1/2, 1}). The report
tests the margin and clustering; raw 2AFC, most of which a smooth image scores
against any target, is not tested. For a comparison of set ``a`` with set
``b`` on the targets both hold,

* the effect is the mean paired difference in percentage points,
  ``100 * mean_i (a_i - b_i)``, with a percentile bootstrap 95% interval over
  targets (:func:`iri_alignment.scoring.bootstrap_ci`);
* the test is exact McNemar (:func:`mcnemar_exact`) when both sides are binary,
  else a paired sign-flip permutation test (:func:`sign_flip_test`);
* p-values are Holm-corrected within each family and measure (:func:`holm`).

Four families (:func:`run_tests`), on reg-free IRIs unless named otherwise:

==============  =================================================================
augmentation    per architecture: AT vs standard, and the ablations
                (adversarial-noaug, trades, mart, standard-simclraug) vs standard,
                SimCLR variants (simclr-nocolor, simclr-adv) vs simclr
architecture    per training regime: residual (ResNet18/50, DenseNet121) vs
                not (VGG16, InceptionV3); per target, mean outcome of the
                residual models minus that of the others; sign-flip test
loss            per architecture with a SimCLR model: simclr vs standard and
                simclr vs adversarial
regularizer     per model: reg-free vs human-aligned vs adversarial (3 pairs)
==============  =================================================================

With training replicates (``study.replicates``), every target of every
replicate is one pair, matched within its replicate (model A of replicate r
against model B of replicate r on the same target): the sign-flip test flips
whole pairs and McNemar counts discordant pairs, so both are stratified by
replicate (for matched pairs, McNemar on the pooled discordant counts is the
Cochran-Mantel-Haenszel test), and the bootstrap resamples pairs.

Every random draw comes from ``np.random.default_rng(seed)`` created afresh for
each test, so a test's result depends only on its own data and the seed, not on
which other tests ran. :func:`write_significance` writes the table as CSV and
as Markdown grouped by family.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from iri_alignment import scoring
from iri_alignment.io import atomic_write

log = logging.getLogger(__name__)

FAMILIES = ("augmentation", "architecture", "loss", "regularizer")
RESIDUAL_ARCHS = ("resnet18", "resnet50", "densenet121")
NON_RESIDUAL_ARCHS = ("vgg16", "inceptionv3")
#: (a, b) regimes compared in the augmentation family, per architecture.
AUGMENTATION_PAIRS = (
    ("adversarial", "standard"),
    ("adversarial-noaug", "standard"),
    ("trades", "standard"),
    ("mart", "standard"),
    ("standard-simclraug", "standard"),
    ("simclr-nocolor", "simclr"),
    ("simclr-adv", "simclr"),
)
CONTRASTIVE_REGIME = "simclr"
SUPERVISED_BASELINES = ("standard", "adversarial")
REGULARIZER_PAIRS = (("reg-free", "human-aligned"), ("reg-free", "adversarial"), ("human-aligned", "adversarial"))
#: regularizer of the augmentation, architecture and loss families
BASE_REGULARIZER = "reg-free"

#: measure -> how a sentence says "judged aligned by it" (``{proxy}`` is filled in).
MEASURES = {
    "2afc_margin": "judged aligned by {proxy} 2AFC beyond its wrong-target null (2AFC margin)",
    "clustering": "matched to their own target by {proxy} clustering",
    "2afc": "judged aligned by {proxy} 2AFC",
}
MEASURE_NAMES = {"2afc_margin": "2AFC margin", "clustering": "clustering", "2afc": "2AFC"}

COLUMNS = ("family", "measure", "comparison", "a", "b", "proxy", "n_targets", "test", "statistic", "p_value", "p_holm",
           "significant", "effect_pp", "ci_low", "ci_high", "discordant_a", "discordant_b", "sentence")

ARCH_NAMES = {"resnet18": "ResNet18", "resnet50": "ResNet50", "vgg16": "VGG16", "densenet121": "DenseNet121",
              "inceptionv3": "InceptionV3"}
REGIME_PHRASES = {
    "standard": "standard",
    "adversarial": "adversarially trained",
    "adversarial-noaug": "adversarially trained (no augmentation)",
    "standard-simclraug": "standard (SimCLR augmentation)",
    "trades": "TRADES-trained",
    "mart": "MART-trained",
    "simclr": "SimCLR",
    "simclr-nocolor": "SimCLR (no colour augmentation)",
    "simclr-adv": "adversarial SimCLR",
}


def arch_name(arch: str) -> str:
    """Display name of an architecture (``resnet18`` -> ``ResNet18``; unknown names unchanged)."""
    return ARCH_NAMES.get(arch, arch)


def regime_phrase(regime: str) -> str:
    """How a sentence names a training regime (``adversarial`` -> ``adversarially trained``)."""
    return REGIME_PHRASES.get(regime, regime)


# -- the tests ------------------------------------------------------------------------


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    r"""Holm step-down adjusted p-values (family-wise error control).

    With the m non-NaN p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`,

    .. math::
        \tilde p_{(i)} = \min\Bigl(1, \max_{j \le i} (m - j + 1)\, p_{(j)}\Bigr),

    returned in the input order. Rejecting :math:`\tilde p < \alpha` controls
    the family-wise error rate at :math:`\alpha`.

    Args:
        p_values: p-values in [0, 1]; NaN entries (tests not run) stay NaN and do not count in m.

    Returns:
        float array of adjusted p-values, same shape as the input.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full_like(p, np.nan)
    valid = p[ok]
    m = len(valid)
    order = np.argsort(valid, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * valid[order]))
    result = np.empty(m)
    result[order] = adjusted
    out[ok] = result
    return out


def is_binary(values: np.ndarray) -> bool:
    """True when every value is exactly 0 or 1 (no 2AFC ties of 1/2)."""
    v = np.asarray(values, dtype=np.float64)
    return bool(np.all((v == 0) | (v == 1)))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> dict:
    r"""Exact McNemar test of paired binary outcomes.

    With :math:`n_{10} = \#\{i: a_i = 1, b_i = 0\}` and
    :math:`n_{01} = \#\{i: a_i = 0, b_i = 1\}` the discordant pairs, under
    :math:`H_0` (a and b align equally often)
    :math:`n_{10} \sim \mathrm{Binomial}(n_{10} + n_{01}, 1/2)`; the p-value is
    the two-sided binomial test (``scipy.stats.binomtest``). With no discordant
    pair the p-value is 1.

    Args:
        a, b: (N,) outcomes in {0, 1}, paired by position.

    Returns:
        ``{"statistic": n10, "p_value", "discordant_a": n10, "discordant_b": n01}``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a {a.shape} and b {b.shape} must be 1-D of one shape")
    if not (is_binary(a) and is_binary(b)):
        raise ValueError("McNemar needs binary outcomes; use sign_flip_test for ties of 1/2")
    n10, n01 = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    p = 1.0 if n10 + n01 == 0 else float(stats.binomtest(n10, n10 + n01, 0.5, alternative="two-sided").pvalue)
    return {"statistic": float(n10), "p_value": p, "discordant_a": n10, "discordant_b": n01}


def sign_flip_test(differences: np.ndarray, permutations: int = 10000, seed: int = 0) -> dict:
    r"""Paired permutation (sign-flip) test of a mean difference, two-sided.

    With paired differences :math:`d_i = a_i - b_i` and statistic
    :math:`T = \frac1n \sum_i d_i`: under :math:`H_0` the two members of each
    pair are exchangeable, so every :math:`d_i` is as likely as
    :math:`-d_i`. Zero differences do not change under a flip; with k non-zero
    ones,

    * exact (when :math:`2^k \le` ``permutations``): all :math:`2^k` sign
      vectors :math:`s`, :math:`p = \#\{s: |\sum_i s_i d_i| \ge |\sum_i d_i|\} / 2^k`;
    * Monte Carlo (otherwise): B = ``permutations`` uniform sign vectors,
      :math:`p = (1 + \#\{b: |T^*_b| \ge |T|\}) / (1 + B)` (never 0).

    All differences zero gives :math:`T = 0` and p = 1. Comparisons allow a
    relative tolerance of 1e-9 so floating-point sums of equal values tie.

    Args:
        differences: (N,) paired differences, any real values (e.g. outcomes in [0, 1] minus outcomes in [0, 1]).
        permutations: B, sign vectors drawn when the exact test would need more (default 10000, >= 1).
        seed: seed of ``np.random.default_rng`` (default 0).

    Returns:
        ``{"statistic": T, "p_value", "exact": bool}``.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0 or np.isnan(d).any():
        raise ValueError(f"differences must be a non-empty 1-D array without NaN, got shape {d.shape}")
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    observed = float(d.mean())
    nonzero = d[d != 0]
    k = len(nonzero)
    if k == 0:
        return {"statistic": 0.0, "p_value": 1.0, "exact": True}
    threshold = abs(nonzero.sum()) * (1 - 1e-9)
    if 2**k <= permutations:
        signs = 1 - 2 * ((np.arange(2**k)[:, None] >> np.arange(k)) & 1)
        p = float(np.mean(np.abs(signs @ nonzero) >= threshold))
        return {"statistic": observed, "p_value": p, "exact": True}
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // k)  # sign vectors per draw, to bound memory at ~8 MB
    hits = 0
    for start in range(0, permutations, chunk):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, permutations - start), k))
        hits += int(np.sum(np.abs(signs @ nonzero) >= threshold))
    return {"statistic": observed, "p_value": (1 + hits) / (1 + permutations), "exact": False}


def paired_comparison(a: np.ndarray, b: np.ndarray, *, permutations: int = 10000, bootstrap: int = 2000, seed: int = 0,
                      level: float = 0.95, permutation_only: bool = False) -> dict:
    r"""Test and effect size of paired outcomes ``a`` vs ``b`` (same targets, same order).

    Effect: :math:`100 \cdot \frac1n \sum_i (a_i - b_i)` percentage points, with
    the percentile bootstrap interval of the mean difference over targets
    (``bootstrap`` resamples, ``seed``), times 100. Test: :func:`mcnemar_exact`
    when both sides are binary (and ``permutation_only`` is False), else
    :func:`sign_flip_test` on :math:`a_i - b_i`.

    Args:
        a, b: (N,) per-target outcomes in [0, 1] (or per-target means of outcomes), N >= 1.
        permutations: sign-flip resamples (default 10000).
        bootstrap: bootstrap resamples for the interval (default 2000).
        seed: seed of the permutation and bootstrap generators (default 0).
        level: interval coverage (default 0.95).
        permutation_only: always use the sign-flip test (default False).

    Returns:
        ``{"n_targets", "test", "statistic", "p_value", "effect_pp", "ci_low",
        "ci_high", "discordant_a", "discordant_b"}``; the discordant counts are
        None for the permutation test. ``test`` is ``"exact McNemar"``,
        ``"sign-flip permutation (exact)"`` or ``"sign-flip permutation (B=..)"``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a {a.shape} and b {b.shape} must be non-empty 1-D arrays of one shape")
    d = a - b
    low, high = scoring.bootstrap_ci(d, bootstrap, seed, level)
    out = {"n_targets": int(len(d)), "effect_pp": 100.0 * float(d.mean()), "ci_low": 100.0 * low, "ci_high": 100.0 * high,
           "discordant_a": None, "discordant_b": None}
    if not permutation_only and is_binary(a) and is_binary(b):
        res = mcnemar_exact(a, b)
        out.update(test="exact McNemar", statistic=res["statistic"], p_value=res["p_value"],
                   discordant_a=res["discordant_a"], discordant_b=res["discordant_b"])
    else:
        res = sign_flip_test(d, permutations, seed)
        name = "sign-flip permutation (exact)" if res["exact"] else f"sign-flip permutation (B={permutations})"
        out.update(test=name, statistic=res["statistic"], p_value=res["p_value"])
    return out


# -- the families -----------------------------------------------------------------------


def _format_p(p: float) -> str:
    """A p-value for a sentence: two significant digits (``0.0003``, ``0.054``, ``1``)."""
    return f"{p:.2g}"


def _sentence(result: dict, subject_a: str, subject_b: str, proxy: str, alpha: float, note: str = "",
              measure: str = "2afc") -> str:
    """The plain-English sentence of one finished test.

    ``subject_a`` is the grammatical subject ("adversarially trained ResNet18's
    reg-free IRIs"); ``subject_b`` what it is compared with ("standard ResNet18's").
    """
    effect = result["effect_pp"]
    interval = f"95% CI {result['ci_low']:.1f} to {result['ci_high']:.1f}"
    if abs(effect) < 0.05:
        how = f"as often as {subject_b} (difference {effect:.1f} points, {interval}"
    else:
        how = f"{abs(effect):.1f} points {'more' if effect > 0 else 'less'} often than {subject_b} ({interval}"
    test = result["test"]
    if pd.notna(result["discordant_a"]):
        test = f"{test} on {int(result['discordant_a'])} vs {int(result['discordant_b'])} discordant targets"
    verdict = "significant" if result["p_holm"] < alpha else "not significant"
    judged = MEASURES[measure].format(proxy=proxy)
    return (f"On the same {result['n_targets']} targets, {subject_a} were {judged} {how}; "
            f"{test} p={_format_p(result['p_value'])}, Holm p={_format_p(result['p_holm'])}: {verdict} at "
            f"alpha={alpha:g}){note}.")


def _outcome_matrix(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Wide table of outcomes: index target_index (and replicate, when the outcomes have one),
    columns (regime, arch, regularizer). Pairs are matched within a replicate, never across."""
    index = ["replicate", "target_index"] if "replicate" in outcomes.columns else "target_index"
    wide = outcomes.pivot_table(index=index, columns=["regime", "arch", "regularizer"], values="outcome",
                                aggfunc="first")
    return wide.sort_index(axis=1)


def _paired(wide: pd.DataFrame, *keys: tuple) -> pd.DataFrame | None:
    """Columns ``keys`` of ``wide`` on the targets all of them hold; None when a key is absent."""
    if any(key not in wide.columns for key in keys):
        return None
    return wide.loc[:, list(keys)].dropna()


def run_tests(outcomes: pd.DataFrame, *, proxy: str, measure: str = "2afc", alpha: float = 0.05, permutations: int = 10000,
              bootstrap: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Every comparison of the four families for one measure, Holm-corrected within each family.

    Args:
        outcomes: one row per (final model, regularizer, target), scored by ``proxy``, with columns
            ``arch``, ``regime``, ``regularizer``, ``target_index`` and ``outcome`` (the ``measure``
            of that target); optional ``optimised_against`` (bool: the set was optimised against ``proxy``).
        proxy: name of the proxy the outcomes come from (for the table and sentences).
        measure: which per-target outcome ``outcome`` holds, a key of :data:`MEASURES` (default ``"2afc"``).
        alpha: family-wise significance level in (0, 1) (default 0.05).
        permutations: sign-flip resamples (default 10000).
        bootstrap: bootstrap resamples of the effect interval (default 2000).
        seed: seed of every test's generators (default 0).

    Returns:
        ``(table, skipped)``: one row per test with :data:`COLUMNS`, and one
        line per comparison that could not be made and why (also logged).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    missing = {"arch", "regime", "regularizer", "target_index", "outcome"} - set(outcomes.columns)
    if missing:
        raise ValueError(f"outcomes lacks columns {sorted(missing)}")
    kw = {"permutations": permutations, "bootstrap": bootstrap, "seed": seed}
    rows: list[dict] = []
    skipped: list[str] = []
    if outcomes.empty:
        skipped.append(f"no outcomes under proxy {proxy}: no test run")
        log.warning(skipped[-1])
        return pd.DataFrame(columns=list(COLUMNS)), skipped
    wide = _outcome_matrix(outcomes)
    self_scored = set()
    if "optimised_against" in outcomes.columns:
        flagged = outcomes[outcomes["optimised_against"].astype(bool)]
        self_scored = set(zip(flagged["regime"], flagged["arch"], flagged["regularizer"]))
    models = sorted({(regime, arch) for regime, arch, _ in wide.columns})
    base = BASE_REGULARIZER

    def add(family: str, comparison: str, a: str, b: str, pair: pd.DataFrame, subjects: tuple[str, str],
            permutation_only: bool = False, note: str = "") -> None:
        if pair is None or pair.empty:
            reason = "a side is missing" if pair is None else "no target is shared"
            skipped.append(f"{family}: {comparison}: {reason}")
            log.info("skipped %s", skipped[-1])
            return
        res = paired_comparison(pair.iloc[:, 0].to_numpy(), pair.iloc[:, 1].to_numpy(), permutation_only=permutation_only,
                                **kw)
        rows.append({"family": family, "measure": measure, "comparison": comparison, "a": a, "b": b, "proxy": proxy, **res,
                     "_subjects": subjects, "_note": note})

    # augmentation: regime pairs per architecture
    for arch in sorted({arch for _, arch in models}):
        for ra, rb in AUGMENTATION_PAIRS:
            if (ra, arch) not in models:
                continue  # the variant was not trained: nothing to compare
            if (rb, arch) not in models:
                skipped.append(f"augmentation: {arch}: {ra} vs {rb}: no {rb} model")
                log.info("skipped %s", skipped[-1])
                continue
            name = arch_name(arch)
            add("augmentation", f"{arch}: {ra} vs {rb}", f"{arch}-{ra} {base}", f"{arch}-{rb} {base}",
                _paired(wide, (ra, arch, base), (rb, arch, base)),
                (f"{regime_phrase(ra)} {name}'s {base} IRIs", f"{regime_phrase(rb)} {name}'s"))

    # architecture: residual vs not, within each regime
    for regime in sorted({regime for regime, _ in models}):
        archs = [arch for r, arch in models if r == regime and (regime, arch, base) in wide.columns]
        residual = [a for a in archs if a in RESIDUAL_ARCHS]
        others = [a for a in archs if a in NON_RESIDUAL_ARCHS]
        unknown = sorted(set(archs) - set(residual) - set(others))
        if unknown:
            log.info("architecture family: %s is neither residual nor listed as non-residual; left out", unknown)
        if not residual or not others:
            skipped.append(f"architecture: {regime}: needs a residual and a non-residual model, has "
                           f"{', '.join(archs) or 'none'}")
            log.info("skipped %s", skipped[-1])
            continue
        block = wide.loc[:, [(regime, a, base) for a in residual + others]].dropna()
        pair = pd.DataFrame({"residual": block.loc[:, [(regime, a, base) for a in residual]].mean(axis=1),
                             "other": block.loc[:, [(regime, a, base) for a in others]].mean(axis=1)})
        res_names, other_names = ", ".join(map(arch_name, residual)), ", ".join(map(arch_name, others))
        add("architecture", f"{regime}: residual vs non-residual", f"{regime} residual ({', '.join(residual)}) {base}",
            f"{regime} non-residual ({', '.join(others)}) {base}", pair,
            (f"{regime_phrase(regime)} residual models' ({res_names}) {base} IRIs",
             f"{regime_phrase(regime)} non-residual models' ({other_names})"), permutation_only=True)

    # loss: contrastive vs supervised, per architecture with a SimCLR model
    contrastive_archs = sorted(arch for regime, arch in models if regime == CONTRASTIVE_REGIME)
    if not contrastive_archs:
        skipped.append(f"loss: no {CONTRASTIVE_REGIME} model")
        log.info("skipped %s", skipped[-1])
    for arch in contrastive_archs:
        name = arch_name(arch)
        for supervised in SUPERVISED_BASELINES:
            add("loss", f"{arch}: {CONTRASTIVE_REGIME} vs {supervised}", f"{arch}-{CONTRASTIVE_REGIME} {base}",
                f"{arch}-{supervised} {base}", _paired(wide, (CONTRASTIVE_REGIME, arch, base), (supervised, arch, base)),
                (f"{regime_phrase(CONTRASTIVE_REGIME)} {name}'s {base} IRIs", f"{regime_phrase(supervised)} {name}'s"))

    # regularizer: the three pairs, per model
    for regime, arch in models:
        name = f"{regime_phrase(regime)} {arch_name(arch)}"
        for ga, gb in REGULARIZER_PAIRS:
            if (regime, arch, ga) not in wide.columns and (regime, arch, gb) not in wide.columns:
                continue
            flagged = [g for g in (ga, gb) if (regime, arch, g) in self_scored]
            note = (f"; the {' and '.join(flagged)} IRIs were optimised against {proxy} itself, so {proxy} is a biased"
                    f" judge of them") if flagged else ""
            add("regularizer", f"{arch}-{regime}: {ga} vs {gb}", f"{arch}-{regime} {ga}", f"{arch}-{regime} {gb}",
                _paired(wide, (regime, arch, ga), (regime, arch, gb)), (f"{name}'s {ga} IRIs", f"its {gb} IRIs"),
                note=note)

    if not rows:
        return pd.DataFrame(columns=list(COLUMNS)), skipped
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    for family in FAMILIES:
        mask = table["family"] == family
        if mask.any():
            table.loc[mask, "p_holm"] = holm(table.loc[mask, "p_value"].to_numpy())
    table["significant"] = table["p_holm"] < alpha
    table["sentence"] = [_sentence(row, *row["_subjects"], proxy, alpha, row["_note"], measure)
                         for row in table.to_dict("records")]
    table["family"] = pd.Categorical(table["family"], FAMILIES, ordered=True)
    table = table.sort_values("family", kind="stable").reset_index(drop=True)
    table["family"] = table["family"].astype(str)
    for col in ("discordant_a", "discordant_b"):
        table[col] = table[col].astype("Int64")
    return table.loc[:, list(COLUMNS)], skipped


def significance_markdown(table: pd.DataFrame, skipped: Sequence[str], *, proxy: str, alpha: float) -> str:
    """The Markdown report: per family a table of tests and their sentences, then what was not tested.

    Args:
        table, skipped: what :func:`run_tests` returns.
        proxy: the proxy the outcomes come from.
        alpha: the family-wise level used for ``significant``.
    """
    lines = [f"# Significance of alignment differences (proxy: {proxy})", "",
             f"Paired tests on per-target outcomes of the same targets; Holm correction within each family at "
             f"alpha={alpha:g}; effect = mean paired difference in percentage points with a bootstrap 95% interval "
             f"over targets.", ""]
    measures = table["measure"] if "measure" in table.columns else pd.Series("2afc", index=table.index)
    for family in FAMILIES:
        for measure in MEASURES:
            part = table[(table["family"] == family) & (measures == measure)]
            if part.empty:
                continue
            lines += _family_markdown(part, f"## {family}, {MEASURE_NAMES[measure]} ({len(part)} tests, Holm over them)")
    if skipped:
        lines += ["## Not tested", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(lines)


def _family_markdown(part: pd.DataFrame, heading: str) -> list[str]:
    """One family's tests of one measure: a heading, the table, the sentences."""
    shown = pd.DataFrame({
        "comparison": part["comparison"], "proxy": part["proxy"], "n": part["n_targets"], "test": part["test"],
        "effect (pp)": [f"{e:+.1f} [{lo:.1f}, {hi:.1f}]" for e, lo, hi in
                        zip(part["effect_pp"], part["ci_low"], part["ci_high"])],
        "p": part["p_value"].map(_format_p), "Holm p": part["p_holm"].map(_format_p),
        "significant": part["significant"].map({True: "yes", False: "no"}),
    })
    lines = [heading, "", shown.to_markdown(index=False, disable_numparse=True), ""]
    lines += [f"- {s}" for s in part["sentence"]] + [""]
    return lines


def write_significance(table: pd.DataFrame, skipped: Sequence[str], out_tables: str | Path, *, proxy: str,
                       alpha: float) -> list[Path]:
    """Write ``significance.csv`` and ``significance.md`` into ``out_tables``; return their paths."""
    out = Path(out_tables)
    csv_path, md_path = out / "significance.csv", out / "significance.md"
    with atomic_write(csv_path, "w") as fh:
        table.to_csv(fh, index=False)
    with atomic_write(md_path, "w") as fh:
        fh.write(significance_markdown(table, skipped, proxy=proxy, alpha=alpha))
    return [csv_path, md_path]
