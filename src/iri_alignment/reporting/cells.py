"""Table cells: per-target summaries of each (model, regularizer, proxy, task), and the paper's over-proxies cells."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from iri_alignment import scoring
from iri_alignment.reporting.layout import NULL_TASKS, TASKS
from iri_alignment.reporting.results import Results

log = logging.getLogger(__name__)

# -- cells ------------------------------------------------------------------------------


def summarise_cells(res: Results, *, bootstrap: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Every per-target cell: one row per (model, regularizer, proxy, task); tasks are
    ``2afc``, ``clustering`` and, where scored, ``2afc_null`` and ``2afc_margin``.

    Args:
        res: the loaded results.
        bootstrap: resamples of the bootstrap 95% interval (default 2000).
        seed: bootstrap seed (default 0).

    Returns:
        columns ``model_id``, ``regularizer``, ``proxy``, ``task``, ``mean``,
        ``std``, ``n``, ``ci_low``, ``ci_high`` (percent, :func:`scoring.summarise`,
        over every target of every replicate), ``replicates`` (how many),
        ``replicate_std`` (std of the replicates' means, ddof 1; NaN for one),
        ``n_iris``, ``n_unconverged``, ``self_scored``.
    """
    rows = []
    outcomes = res.outcomes if "replicate" in res.outcomes.columns else res.outcomes.assign(replicate=0)
    for (model_id, regularizer, proxy), part in outcomes.groupby(["model_id", "regularizer", "proxy"], sort=True):
        info = res.sets.loc[(model_id, regularizer)]
        for task in (*TASKS, *NULL_TASKS):
            if part[task].isna().all():  # scored before the null existed
                continue
            by_replicate = 100 * part.groupby("replicate")[task].mean()
            rows.append({"model_id": model_id, "regularizer": regularizer, "proxy": proxy, "task": task,
                         **scoring.summarise(part[task].to_numpy(dtype=np.float64), bootstrap, seed),
                         "replicates": len(by_replicate),
                         "replicate_std": by_replicate.std(ddof=1) if len(by_replicate) > 1 else np.nan,
                         "n_iris": int(info["n_iris"]), "n_unconverged": int(info["n_unconverged"]),
                         "self_scored": info["self_proxy"] == proxy})
    columns = ["model_id", "regularizer", "proxy", "task", "mean", "std", "n", "ci_low", "ci_high", "replicates",
               "replicate_std", "n_iris", "n_unconverged", "self_scored"]
    return pd.DataFrame(rows, columns=columns)


def averaged_proxies(available: Sequence[str], proxies: Sequence[str]) -> list[str]:
    """The proxies an over-proxies cell averages: the LPIPS variants among ``proxies`` that were
    scored (the paper's cells), else every scored one of ``proxies``."""
    scored = [p for p in proxies if p in set(available)]
    lpips = [p for p in scored if p.startswith("lpips")]
    return lpips or scored


def over_proxy_cells(cells: pd.DataFrame, proxies: Sequence[str]) -> pd.DataFrame:
    """The paper's cells: mean +- std over proxies of per-proxy means (:func:`scoring.summarise_over_proxies`).

    A set optimised against one of the proxies is averaged over the others
    (when any remain). Returns one row per (model, regularizer, task) with
    ``proxy = "over-proxies"``, ``proxies_used`` (comma-separated), ``mean``,
    ``std`` (ddof 0), ``n`` (proxies) and the set's convergence counts.
    """
    rows = []
    for (model_id, regularizer, task), part in cells[cells["proxy"].isin(proxies)].groupby(
            ["model_id", "regularizer", "task"], sort=True):
        use = part[~part["self_scored"]] if (~part["self_scored"]).any() else part
        use = use.sort_values("proxy", key=lambda names: names.map(list(proxies).index))
        cell = scoring.summarise_over_proxies(dict(zip(use["proxy"], use["mean"])))
        rows.append({"model_id": model_id, "regularizer": regularizer, "proxy": "over-proxies", "task": task, **cell,
                     "ci_low": np.nan, "ci_high": np.nan, "replicates": int(part["replicates"].iat[0]),
                     "replicate_std": np.nan, "n_iris": int(part["n_iris"].iat[0]),
                     "n_unconverged": int(part["n_unconverged"].iat[0]), "self_scored": bool(use["self_scored"].any()),
                     "proxies_used": ",".join(use["proxy"])})
    return pd.DataFrame(rows, columns=[*cells.columns, "proxies_used"])



def cell_lookup(cells: pd.DataFrame) -> dict[tuple, pd.Series]:
    """Cells keyed by (model_id, regularizer, proxy, task)."""
    return {(row["model_id"], row["regularizer"], row["proxy"], row["task"]): row for _, row in cells.iterrows()}


