"""Tables and figures of the study from a results folder (protocol, sections 6-9).

Modules: :mod:`.results` reads the folder, :mod:`.layout` orders and labels
rows, :mod:`.cells` summarises outcomes, :mod:`.tables` and :mod:`.figures`
draw them, :mod:`.summary` writes the validity table and the README summary.

:func:`build_report` reads what the pipeline wrote under ``results``::

    models/<model_id>/metrics.json         training metrics and model meta (accuracies as fractions)
    evaluation/<model_id>.json             separate evaluation (preferred over metrics.json)
    iris/<model_id>/<regularizer>/         IRI sets (grid.png, results.csv, meta.json)
    scores/<model_id>/<regularizer>.csv    per (proxy, IRI): 2afc and clustering outcomes, rep_loss, ...
    scores/<model_id>/<regularizer>.json   summary, with the model meta

``model_id`` is ``<arch>-<regime>`` or, for an intermediate SimCLR checkpoint,
``<arch>-<regime>@<epoch:04d>``. Any subset may be present: every table and
figure the data allows is built, and everything skipped is logged and listed
in the returned summary.

Cells (all in percent):

* *per-target cell* (one proxy): ``mean ± std (n=targets)`` of the per-IRI
  outcomes :math:`o_i \\in [0, 1]` times 100, with the sample standard
  deviation (ddof 1) over the n targets, and a percentile bootstrap 95%
  interval of the mean (figures and ``cells.csv``);
* *over-proxies cell* (the paper's): ``mean ± std (n=proxies)`` of the
  per-proxy means, population std (ddof 0) over the proxies; LPIPS variants
  when any were scored, else every scored proxy; an adversarial IRI set is
  averaged over the proxies it was not optimised against;
* *null and margin* (protocol 9): beside each 2AFC cell, the same 2AFC against
  the other-class candidates of the clustering triplet (``2afc_null``) and the
  target-specific margin 2AFC - null (``2afc_margin``, in points);
* marks: ``†`` the IRI set has IRIs whose rep loss exceeds ``converged_below``
  (the footnote counts them), ``‡`` the cell is scored by the proxy the IRIs
  were optimised against (adversarial regularizer: a biased judge),
  ``✗`` the model is below its accuracy floor (``evaluation.floor``): not
  data, left out of the significance tests, ``–`` no data.

Tables (each as ``.csv``, ``.md`` and booktabs ``.tex`` in ``out_tables``;
every one names its proxy in its title and in a ``proxy`` column or its
headers): ``alignment_by_regularizer``, ``alignment_by_regularizer_over_proxies``,
``proxies``, ``architecture_loss``, ``augmentation``, ``simclr_epochs``; plus
``cells.csv`` (every cell as numbers), ``significance.csv``/``.md``
(:mod:`iri_alignment.significance`; on the 2AFC margin and on clustering),
``validity.md``/``.json`` and ``summary.md`` (:mod:`.summary`). Figures (PNG in ``out_figures``):
``grids/<model_id>_<regularizer>.png``, ``alignment_by_regularizer.png``,
``proxy_agreement.png``, ``simclr_epochs.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from iri_alignment import significance
from iri_alignment.io import atomic_write
from iri_alignment.plan import parse_model_id
from iri_alignment.reporting.cells import (
    averaged_proxies,
    over_proxy_cells,
    summarise_cells,
)
from iri_alignment.reporting.figures import (
    copy_grids,
    plot_alignment_by_regularizer,
    plot_proxy_agreement,
    plot_simclr_epochs,
)
from iri_alignment.reporting.layout import (
    AUGMENTATION_REGIMES,
    CONTRASTIVE,
    final_models,
)
from iri_alignment.reporting.results import Results, load_results
from iri_alignment.reporting.summary import write_summary, write_validity
from iri_alignment.reporting.tables import (
    alignment_by_regularizer_table,
    alignment_over_proxies_table,
    architecture_loss_table,
    augmentation_table,
    latex_escape,
    proxies_table,
    simclr_epochs_table,
    write_table,
)

__all__ = ["Results", "build_report", "latex_escape", "load_results", "parse_model_id"]

log = logging.getLogger(__name__)

# -- the report -------------------------------------------------------------------------


def build_report(results: Path, out_tables: Path, out_figures: Path, *, structural_proxy: str, proxies: list[str],
                 alpha: float = 0.05, permutations: int = 10000, bootstrap: int = 2000, seed: int = 0,
                 converged_below: float = 0.1, epochs_regularizer: str = "reg-free", floors: dict | None = None,
                 machine: dict | None = None, profile: str | None = None) -> dict:
    """Every table, figure and significance test the results folder allows.

    Args:
        results: the results root (layout in the module docstring); read only.
        out_tables: folder for the tables (created).
        out_figures: folder for the figures (created).
        structural_proxy: the proxy the single-proxy tables, figures and tests use (e.g. ``ms-ssim``, ``lpips-alex``).
        proxies: the proxies to report in the ``proxies`` table and to average over (LPIPS variants
            when any were scored).
        alpha: family-wise level of the significance tests, in (0, 1) (default 0.05).
        permutations: sign-flip resamples of the permutation tests (default 10000).
        bootstrap: bootstrap resamples of every interval (default 2000).
        seed: seed of every bootstrap and permutation (default 0).
        converged_below: an IRI with rep loss above this did not converge and marks its cells (default 0.1).
        epochs_regularizer: the regularizer of the alignment-over-SimCLR-epochs table and figure
            (``inversion.epochs_regularizer``; default ``reg-free``).
        floors: ``evaluation.floor``; a model below it is marked failed in every table and left out of
            the significance tests (default None: no check).
        machine: :func:`iri_alignment.provenance.machine` of the run, named in ``summary.md`` (default None).
        profile: the params profile, named in ``summary.md`` (default None).

    Returns:
        ``{"tables": [...], "figures": [...], "skipped": [...], "proxy", "headline", "failed"}``:
        paths written (str), what was skipped and why, and the headline numbers:
        ``alignment`` (final model -> regularizer -> structural-proxy 2AFC %),
        ``proxy_rank_correlation`` (Spearman with the structural proxy across models)
        and ``significant`` (the comparisons significant after Holm) of ``n_tests``;
        ``failed`` maps each model below its floor to the reasons.

    Raises:
        FileNotFoundError: ``results`` is not a folder, or holds nothing to report (:func:`load_results`).
    """
    out_tables, out_figures = Path(out_tables), Path(out_figures)
    res = load_results(results, converged_below=converged_below, floors=floors)
    out_tables.mkdir(parents=True, exist_ok=True)
    out_figures.mkdir(parents=True, exist_ok=True)
    skipped = list(res.skipped)

    def skip(reason: str) -> None:
        skipped.append(reason)
        log.info("report: skipped %s", reason)

    cells = summarise_cells(res, bootstrap=bootstrap, seed=seed)
    available = sorted(set(cells["proxy"]))
    for p in [*proxies, structural_proxy]:
        if p not in available:
            skip(f"proxy {p}: no scores use it")
    used = averaged_proxies(available, proxies)
    over = over_proxy_cells(cells, used)
    with atomic_write(out_tables / "cells.csv", "w") as fh:
        pd.concat([cells.assign(proxies_used=cells["proxy"]), over], ignore_index=True).to_csv(fh, index=False)
    tables_written: list[Path] = [out_tables / "cells.csv"]

    kw = {"converged_below": converged_below}
    builders = [
        ("alignment_by_regularizer", lambda: alignment_by_regularizer_table(res, cells, structural_proxy, **kw),
         f"no final model scored by {structural_proxy}"),
        ("alignment_by_regularizer_over_proxies", lambda: alignment_over_proxies_table(res, over, used, **kw),
         "no final model scored by any of the proxies"),
        ("proxies", lambda: proxies_table(res, cells, proxies, **kw), "no reg-free IRI set of a final model scored by the proxies"),
        ("architecture_loss", lambda: architecture_loss_table(res, cells, structural_proxy, **kw),
         f"no reg-free IRI set of a final model scored by {structural_proxy}"),
        ("augmentation", lambda: augmentation_table(res, cells, structural_proxy, **kw),
         f"fewer than two of the regimes {', '.join(AUGMENTATION_REGIMES)} scored by {structural_proxy}"),
        ("simclr_epochs", lambda: simclr_epochs_table(res, cells, structural_proxy, regularizer=epochs_regularizer, **kw),
         f"no SimCLR model ({', '.join(CONTRASTIVE)}) with {epochs_regularizer} IRIs scored by {structural_proxy}"),
    ]
    for name, build, reason in builders:
        table = build()
        if table is None:
            skip(f"table {name}: {reason}")
        else:
            tables_written += write_table(table, out_tables)

    final = final_models(res)
    validity_paths, failures = write_validity(res, floors, out_tables)
    tables_written += validity_paths
    for m, why in failures.items():
        log.error("%s is below its accuracy floor (%s): not data; left out of the significance tests", m, why)
    tested = [m for m in final if m not in failures]
    test_kw = {"alpha": alpha, "permutations": permutations, "bootstrap": bootstrap, "seed": seed}
    tests, not_tested = run_significance(res, tested, structural_proxy, **test_kw)
    replicates = sorted(res.outcomes["replicate"].unique()) if "replicate" in res.outcomes.columns else []
    by_replicate = pd.DataFrame()
    if len(replicates) > 1:  # every direction per replicate too (pooled above)
        by_replicate = pd.concat([run_significance(res, tested, structural_proxy, replicate=r, **test_kw)[0]
                                  .assign(replicate=r) for r in replicates], ignore_index=True)
        with atomic_write(out_tables / "significance_by_replicate.csv", "w") as fh:
            by_replicate.to_csv(fh, index=False)
        tables_written.append(out_tables / "significance_by_replicate.csv")
    not_tested += [f"{m}: below its accuracy floor ({why}); left out of every test" for m, why in sorted(failures.items())]
    tables_written += significance.write_significance(tests, not_tested, out_tables, proxy=structural_proxy, alpha=alpha)
    skipped += [f"significance: {s}" for s in not_tested]
    tables_written += write_summary(res, cells, tests, proxies, machine, failures, out_tables, profile=profile,
                                    by_replicate=by_replicate)

    figures = copy_grids(res, out_figures / "grids")
    if not figures:
        skip("grids: no IRI set has a grid.png")
    plotted = plot_alignment_by_regularizer(res, cells, structural_proxy, out_figures / "alignment_by_regularizer.png")
    if plotted is None:
        skip(f"figure alignment_by_regularizer: no final model scored by {structural_proxy}")
    agreement, rho = plot_proxy_agreement(res, cells, proxies, structural_proxy, out_figures / "proxy_agreement.png")
    if agreement is None:
        skip("figure proxy_agreement: no reg-free IRI set scored by the proxies")
    epochs = plot_simclr_epochs(res, cells, structural_proxy, out_figures / "simclr_epochs.png", epochs_regularizer)
    if epochs is None:
        skip("figure simclr_epochs: no SimCLR checkpoint with a known epoch")
    figures += [p for p in (plotted, agreement, epochs) if p is not None]

    main = cells[(cells["proxy"] == structural_proxy) & (cells["task"] == "2afc") & cells["model_id"].isin(final)]
    alignment = {m: {g: round(float(v), 2) for g, v in zip(part["regularizer"], part["mean"])}
                 for m, part in main.groupby("model_id", sort=False)}
    margins = cells[(cells["proxy"] == structural_proxy) & (cells["task"] == "2afc_margin") & cells["model_id"].isin(final)]
    margin = {m: {g: round(float(v), 2) for g, v in zip(part["regularizer"], part["mean"])}
              for m, part in margins.groupby("model_id", sort=False)}
    significant = tests[tests["significant"].astype(bool)]
    headline = {"alignment": {m: alignment[m] for m in final if m in alignment},
                "margin": {m: margin[m] for m in final if m in margin}, "proxy_rank_correlation": rho,
                "n_tests": int(len(tests)),
                "significant": [f"{c} ({significance.MEASURE_NAMES[k]})" for c, k in zip(significant["comparison"],
                                                                                         significant["measure"])]}
    log.info("report: %d tables, %d figures, %d skipped", len(tables_written), len(figures), len(skipped))
    return {"tables": [str(p) for p in tables_written], "figures": [str(p) for p in figures], "skipped": skipped,
            "proxy": structural_proxy, "headline": headline, "failed": failures, "machine": machine}


def run_significance(res: Results, models: list[str], proxy: str, *, replicate: int | None = None,
                     **kw) -> tuple[pd.DataFrame, list[str]]:
    """The significance tests of ``models`` under ``proxy``, on the 2AFC margin and on clustering
    (raw 2AFC only for scores written before the null existed): one table, Holm within each
    family and measure. Every replicate's targets pooled (pairs matched within a replicate),
    or only replicate ``replicate``'s."""
    part = res.outcomes[(res.outcomes["proxy"] == proxy) & res.outcomes["model_id"].isin(models)]
    if replicate is not None:
        part = part[part["replicate"] == replicate]
    part = part.assign(arch=part["model_id"].map(res.models["arch"]), regime=part["model_id"].map(res.models["regime"]))
    has_margin = part["2afc_margin"].notna().all() if not part.empty else True
    tables, skipped = [], []
    for measure in ("2afc_margin" if has_margin else "2afc", "clustering"):
        table, why = significance.run_tests(part.assign(outcome=part[measure].astype(np.float64)), proxy=proxy,
                                            measure=measure, **kw)
        tables.append(table)
        skipped += [f"{significance.MEASURE_NAMES[measure]}: {w}" for w in why]
    tables = [t for t in tables if not t.empty]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(significance.COLUMNS))
    return table, skipped
