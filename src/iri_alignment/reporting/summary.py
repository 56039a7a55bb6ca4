"""What a run is worth: the validity table and the summary the README quotes (protocol 9).

* ``validity.{md,json}``: every model with its accuracies, its floor and
  pass / fail; every IRI set with its % converged and the inversion's own null
  (% of IRIs nearer their own target's representation than any other's).
* ``summary.md``: per final model and regularizer, under every proxy, 2AFC,
  its wrong-target null, the margin 2AFC - null and clustering; then the
  directions of protocol 8 as tested (AT vs standard per architecture, on the
  margin and on clustering); then the machine. The README includes this file
  (``make readme``), so no number in it is typed by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from iri_alignment.io import atomic_write
from iri_alignment.provenance import machine_line
from iri_alignment.reporting.layout import REGULARIZERS, failed, final_models, model_label, order
from iri_alignment.reporting.results import Results


def _pct(value) -> str:
    return f"{value:.1f}" if pd.notna(value) and np.isfinite(value) else "–"


def _trained(res: Results, m: str) -> pd.DataFrame:
    """The trained replicates of model ``m`` (rows of ``res.replicates``), or its pooled row."""
    if res.replicates is None or "model" not in res.replicates.columns:
        return res.models.loc[[m]]
    return res.replicates[res.replicates["model"] == m].sort_values("replicate")


def validity_tables(res: Results, floors: dict | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(models, sets): one row per trained final model (every replicate) and one per scored IRI set
    (pooled over replicates). A model fails when any of its replicates is below its floor."""
    models = []
    for m in final_models(res):
        for rid, row in _trained(res, m).iterrows():
            floor = (floors or {}).get(row["kind"], {})
            status = "n/a" if pd.isna(row["passed"]) else ("passed" if row["passed"] else "FAILED")
            models.append({"model": m, "trained": rid, "kind": row["kind"], "clean (%)": _pct(row["clean_acc"]),
                           "robust (%)": _pct(row["robust_acc"]), "probe (%)": _pct(row["probe_acc"]),
                           "floor": ", ".join(f"{k} {v:g}" for k, v in floor.items()) or "–", "status": status,
                           "why": row["below_floor"] or ""})
    sets = []
    for (m, g), info in res.sets.iterrows():
        n = int(info["n_iris"])
        specific = f"{100 * info['n_specific'] / n:.0f}" if info["has_specific"] else "–"
        sets.append({"model": m, "regularizer": g, "IRIs": n, "converged (%)": f"{100 * (n - info['n_unconverged']) / n:.0f}",
                     "specific (%)": specific, "model status": "FAILED" if failed(res.models, m) else ""})
    return pd.DataFrame(models), pd.DataFrame(sets)


def write_validity(res: Results, floors: dict | None, out_tables) -> tuple[list, dict[str, str]]:
    """Write ``validity.md`` and ``validity.json``; return (paths, failed model -> reasons)."""
    models, sets = validity_tables(res, floors)
    failures = {m: res.models.at[m, "below_floor"] for m in final_models(res) if failed(res.models, m)}
    lines = ["**Validity of this run** (protocol 9): a model below its accuracy floor (`evaluation.floor`, percent) "
             "is not data; an IRI set's *specific* column is the inversion's own null, the share of IRIs whose "
             "representation is nearer their own target's than any other target's.", ""]
    lines += [models.to_markdown(index=False, disable_numparse=True) if not models.empty else "No models.", ""]
    lines += [sets.to_markdown(index=False, disable_numparse=True) if not sets.empty else "No IRI sets.", ""]
    if failures:
        lines += [f"FAILED, left out of the significance tests and the directions: {', '.join(sorted(failures))}.", ""]
    md, js = out_tables / "validity.md", out_tables / "validity.json"
    with atomic_write(md, "w") as fh:
        fh.write("\n".join(lines))
    with atomic_write(js, "w") as fh:
        json.dump({"floors": floors, "failed": failures, "models": models.to_dict("records"),
                   "sets": sets.to_dict("records")}, fh, indent=2)
        fh.write("\n")
    return [md, js], failures


def summary_frame(res: Results, cells: pd.DataFrame, proxies) -> pd.DataFrame:
    """Per final model and regularizer: each proxy's 2AFC, null, margin and clustering (means, %), and convergence."""
    lookup = {(r.model_id, r.regularizer, r.proxy, r.task): r for r in cells.itertuples(index=False)}
    rows = []
    for m in final_models(res):
        for g in order(cells.loc[cells["model_id"] == m, "regularizer"], REGULARIZERS):
            row = {"model": model_label(res.models, m) + (" ✗" if failed(res.models, m) else ""), "regularizer": g}
            for p in proxies:
                for task, name in (("2afc", "2AFC"), ("2afc_null", "null"), ("2afc_margin", "margin"),
                                   ("clustering", "clust.")):
                    cell = lookup.get((m, g, p, task))
                    spread = getattr(cell, "replicate_std", np.nan) if cell is not None else np.nan
                    row[f"{name} {p}"] = ((_pct(cell.mean) + (f" ± {spread:.1f}" if np.isfinite(spread) else ""))
                                          if cell is not None else "–")
            info = res.sets.loc[(m, g)] if (m, g) in res.sets.index else None
            if info is not None:
                n = int(info["n_iris"])
                row["converged"] = f"{n - int(info['n_unconverged'])}/{n}"
                row["specific"] = f"{int(info['n_specific'])}/{n}" if info["has_specific"] else "–"
            rows.append(row)
    return pd.DataFrame(rows)


def directions_frame(tests: pd.DataFrame, by_replicate: pd.DataFrame | None = None) -> pd.DataFrame:
    """The augmentation family's tests (AT vs standard per architecture), one row per measure:
    pooled over replicates, then (when given) each replicate's own tests."""
    if tests.empty:
        return tests
    part = tests[tests["family"] == "augmentation"].assign(replicate="pooled")
    if by_replicate is not None and not by_replicate.empty:
        own = by_replicate[by_replicate["family"] == "augmentation"]
        part = pd.concat([part, own.assign(replicate=own["replicate"].astype(str))], ignore_index=True)
        part = part.sort_values(["comparison", "measure"], kind="stable")
    return pd.DataFrame({"comparison": part["comparison"], "measure": part["measure"], "replicate": part["replicate"],
                         "n": part["n_targets"],
                         "effect (pp)": [f"{e:+.1f} [{lo:.1f}, {hi:.1f}]" for e, lo, hi in
                                         zip(part["effect_pp"], part["ci_low"], part["ci_high"])],
                         "test": part["test"], "p": part["p_value"].map(lambda p: f"{p:.2g}"),
                         "Holm p": part["p_holm"].map(lambda p: f"{p:.2g}")})


def write_summary(res: Results, cells: pd.DataFrame, tests: pd.DataFrame, proxies, machine: dict | None,
                  failures: dict[str, str], out_tables, *, profile: str | None = None,
                  by_replicate: pd.DataFrame | None = None) -> list:
    """Write ``summary.md``: the tables a README quotes, with the machine they came from."""
    frame = summary_frame(res, cells, [p for p in proxies if p in set(cells["proxy"])])
    directions = directions_frame(tests, by_replicate)
    replicated = by_replicate is not None and not by_replicate.empty
    lines = [f"**Alignment of every final model** (profile `{profile}`; % of targets; *null*: 2AFC against a target of "
             "another class; *margin*: 2AFC - null, in points; *clust.*: clustering, chance 33.3; *converged*: "
             "IRIs with rep loss <= the threshold; *specific*: IRIs nearer their own target's representation than any "
             "other's)." + (" With training replicates, a cell is the mean over every target of every replicate "
                            "± the std of the replicates' own means; *converged* and *specific* count every "
                            "replicate's IRIs." if replicated else ""), ""]
    lines += [frame.to_markdown(index=False, disable_numparse=True) if not frame.empty else "No scores.", ""]
    if not directions.empty:
        lines += ["**Directions** (AT vs standard and the other augmentation pairs, reg-free IRIs, paired tests on the "
                  "same targets, Holm within each family and measure"
                  + ("; *pooled*: every target of every replicate, pairs matched within a replicate; then each "
                     "replicate alone" if replicated else "") + "):", "",
                  directions.to_markdown(index=False, disable_numparse=True), ""]
    if failures:
        lines += ["✗ FAILED (below the accuracy floor, not data; left out of the tests): "
                  + "; ".join(f"{m} ({why})" for m, why in sorted(failures.items())) + ".", ""]
    if machine:
        lines += [f"Machine: {machine_line(machine)}.", ""]
    path = out_tables / "summary.md"
    with atomic_write(path, "w") as fh:
        fh.write("\n".join(lines))
    return [path]
