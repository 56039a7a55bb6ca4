"""The report's figures (PNG): IRI grids, alignment by regularizer, proxy agreement, alignment over SimCLR epochs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from iri_alignment.io import atomic_write
from iri_alignment.reporting.cells import cell_lookup
from iri_alignment.reporting.layout import (
    SELF_SCORED,
    UNCONVERGED,
    failed,
    final_models,
    regularizer_order,
    training_label,
)
from iri_alignment.reporting.results import Results
from iri_alignment.reporting.tables import simclr_checkpoints
from iri_alignment.significance import arch_name

log = logging.getLogger(__name__)

# -- figures ----------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=150)
    return path


def copy_grids(res: Results, out_dir: Path) -> list[Path]:
    """Copy every IRI set's ``grid.png`` to ``out_dir/<model_id>_<regularizer>.png``."""
    paths = []
    for model_id, regularizer, grid in res.grids:
        dst = out_dir / f"{model_id}_{regularizer}.png"
        with atomic_write(dst) as fh:
            fh.write(grid.read_bytes())
        paths.append(dst)
    return paths


def plot_alignment_by_regularizer(res: Results, cells: pd.DataFrame, proxy: str, path: Path) -> Path | None:
    """Grouped bars: one group per final model, one bar per regularizer; error bars are the bootstrap 95% interval;
    a black tick on each bar is its wrong-target null (the bar above the tick is the margin); a failed model
    (below its accuracy floor) is labelled FAILED."""
    part = cells[(cells["proxy"] == proxy) & (cells["task"] == "2afc")]
    models = [m for m in final_models(res) if m in set(part["model_id"])]
    if not models:
        return None
    regs, lookup = regularizer_order(part), cell_lookup(cells[cells["proxy"] == proxy])
    fig = Figure(figsize=(max(5.0, 1.1 * len(models) + 2), 3.8))
    ax = fig.add_subplot()
    width = 0.8 / len(regs)
    x = np.arange(len(models))
    for k, g in enumerate(regs):
        got = [lookup.get((m, g, proxy, "2afc")) for m in models]
        mean = np.array([c["mean"] if c is not None else np.nan for c in got])
        low = np.array([c["mean"] - c["ci_low"] if c is not None else np.nan for c in got])
        high = np.array([c["ci_high"] - c["mean"] if c is not None else np.nan for c in got])
        pos = x + (k - (len(regs) - 1) / 2) * width
        ax.bar(pos, mean, width, yerr=np.vstack([low, high]), capsize=2, label=g)
        null = [lookup.get((m, g, proxy, "2afc_null")) for m in models]
        if any(c is not None for c in null):
            ax.scatter(pos, [c["mean"] if c is not None else np.nan for c in null], marker="_", s=120, color="black",
                       linewidths=2, zorder=3, label="wrong-target null" if k == 0 else None)
        for p, c in zip(pos, got):
            if c is not None and (c["n_unconverged"] > 0 or c["self_scored"]):
                marks = UNCONVERGED * (c["n_unconverged"] > 0) + SELF_SCORED * bool(c["self_scored"])
                ax.text(p, min(c["ci_high"], 100) + 1, marks, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{arch_name(res.models.at[m, 'arch'])}\n{training_label(res.models, m)}"
                      + ("\nFAILED (below floor)" if failed(res.models, m) else "") for m in models], fontsize=7)
    ax.set_ylim(0, 108)
    ax.set_ylabel(f"2AFC alignment (%), {proxy}")
    ax.set_title(f"IRI alignment by regularizer ({proxy} 2AFC; bars: bootstrap 95% CI; ticks: wrong-target null)",
                 fontsize=9)
    ax.legend(fontsize=7, title="regularizer", title_fontsize=7)
    return _save(fig, path)


def proxy_rank_correlation(cells: pd.DataFrame, proxies: Sequence[str], reference: str, models: Sequence[str],
                           regularizer: str = "reg-free") -> dict[str, float]:
    """Spearman rank correlation, across ``models``, of each proxy's 2AFC with the ``reference`` proxy's.

    NaN where fewer than three models have both scores or one of them is constant.
    """
    part = cells[(cells["regularizer"] == regularizer) & (cells["task"] == "2afc")]
    wide = part.pivot_table(index="model_id", columns="proxy", values="mean").reindex(list(models))
    out = {}
    for p in proxies:
        if p not in wide.columns or reference not in wide.columns:
            continue
        ok = wide[reference].notna() & wide[p].notna()
        x, y = wide.loc[ok, reference].to_numpy(), wide.loc[ok, p].to_numpy()
        varies = len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
        out[p] = float(stats.spearmanr(x, y).statistic) if varies else float("nan")
    return out


def plot_proxy_agreement(res: Results, cells: pd.DataFrame, proxies: Sequence[str], reference: str, path: Path,
                         regularizer: str = "reg-free") -> tuple[Path | None, dict[str, float]]:
    """2AFC of every final model under each proxy (models sorted by the ``reference`` proxy), with each proxy's
    Spearman correlation with the reference in the legend: do the proxies rank models alike?"""
    part = cells[(cells["regularizer"] == regularizer) & (cells["task"] == "2afc") & cells["proxy"].isin(proxies)]
    models = [m for m in final_models(res) if m in set(part["model_id"])]
    present = [p for p in proxies if p in set(part["proxy"])]
    if not models or not present:
        return None, {}
    lookup = cell_lookup(part)
    ref = reference if reference in present else present[0]
    models = sorted(models, key=lambda m: lookup[(m, regularizer, ref, "2afc")]["mean"] if (m, regularizer, ref, "2afc")
                    in lookup else -1.0)
    rho = proxy_rank_correlation(cells, present, ref, models, regularizer)
    fig = Figure(figsize=(max(5.0, 0.9 * len(models) + 2), 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(models))
    for p in present:
        y = [lookup[(m, regularizer, p, "2afc")]["mean"] if (m, regularizer, p, "2afc") in lookup else np.nan for m in models]
        label = p if p == ref else f"{p} (Spearman {rho.get(p, np.nan):.2f})"
        ax.plot(x, y, marker="o", lw=1, label=label)
    ax.set_xticks(x, [f"{arch_name(res.models.at[m, 'arch'])}\n{training_label(res.models, m)}" for m in models],
                  fontsize=7)
    ax.set_ylim(-3, 103)
    ax.set_ylabel(f"2AFC alignment (%), {regularizer} IRIs")
    ax.set_title(f"Proxy agreement: models ordered by {ref}; Spearman vs {ref}", fontsize=9)
    ax.legend(fontsize=7, title="proxy", title_fontsize=7)
    return _save(fig, path), rho


def plot_simclr_epochs(res: Results, cells: pd.DataFrame, proxy: str, path: Path,
                       regularizer: str = "reg-free") -> Path | None:
    """2AFC of ``regularizer`` IRIs over SimCLR epochs, one line per (architecture, regime) with its
    bootstrap band; final probe accuracy as squares on a second axis."""
    points = simclr_checkpoints(res, cells, proxy, regularizer).dropna(subset=["epoch"])
    if points.empty:
        return None
    lookup = cell_lookup(cells[(cells["proxy"] == proxy) & (cells["regularizer"] == regularizer) & (cells["task"] == "2afc")])
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    probe_ax = None
    for (arch, regime), group in points.groupby(["arch", "regime"], sort=True):
        got = [lookup[(m, regularizer, proxy, "2afc")] for m in group["model_id"]]
        epochs = group["epoch"].astype(int).to_numpy()
        line, = ax.plot(epochs, [c["mean"] for c in got], marker="o", label=f"{arch_name(arch)} {regime}")
        ax.fill_between(epochs, [c["ci_low"] for c in got], [c["ci_high"] for c in got], alpha=0.2, color=line.get_color())
        probe = res.models.loc[group["model_id"], "probe_acc"].to_numpy(dtype=np.float64)
        if np.isfinite(probe).any():
            probe_ax = probe_ax or ax.twinx()
            probe_ax.plot(epochs, probe, ls="none", marker="s", color=line.get_color())
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{regularizer} 2AFC (%), {proxy}")
    ax.set_ylim(-3, 103)
    if probe_ax is not None:
        probe_ax.set_ylabel("linear-probe accuracy (%) (squares)")
        probe_ax.set_ylim(-3, 103)
    ax.set_title(f"Alignment over SimCLR training ({proxy} 2AFC; band: bootstrap 95% CI)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


