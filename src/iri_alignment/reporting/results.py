"""Reading a results folder into tables (:class:`Results`, :func:`load_results`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from iri_alignment import validity
from iri_alignment.io import read_json
from iri_alignment.plan import base_model_id, parse_model_id, replicate_of

log = logging.getLogger(__name__)

#: per-IRI columns a scores CSV may lack (scored before they existed): NaN then
OPTIONAL_COLUMNS = ("2afc_null", "2afc_margin", "rep_other_min", "rep_specific")
OUTCOME_COLUMNS = ["model_id", "regularizer", "proxy", "index", "target_index", "rep_loss", "unconverged", "2afc",
                   "clustering", "optimised_against", *OPTIONAL_COLUMNS]


class ResultsError(ValueError):
    """A results folder holds something the report cannot use; the message names the file and the fix."""

# -- reading the results folder ---------------------------------------------------------


def _read_json_or_none(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _percent(value) -> float:
    """A fraction in [0, 1] (or None) as a percentage (NaN when absent)."""
    return 100.0 * float(value) if value is not None else float("nan")


@dataclass
class Results:
    """Everything :func:`build_report` reads, as tables.

    Attributes:
        root: the results folder.
        models: one row per model id (index ``model_id``): ``arch``, ``regime``,
            ``epoch`` (checkpoint epoch for ``@`` ids, else NA), ``final_epoch``,
            ``dataset``, ``clean_acc``, ``robust_acc``, ``probe_acc`` (percent, NaN when
            unknown), ``eps``, ``norm`` (of the training adversary, l2 unless an
            external model says otherwise), ``external`` (a ``models.external`` entry),
            ``attack_steps``, ``accuracy_source``, ``kind``
            (standard, robust, contrastive), ``passed`` (above its ``evaluation.floor``;
            NA for intermediate checkpoints and when no floors were given) and
            ``below_floor`` (why not, "" when passed).
        outcomes: one row per (model, regularizer, proxy, IRI): ``model_id``,
            ``regularizer``, ``proxy``, ``index``, ``target_index``, ``rep_loss``,
            ``unconverged`` (rep loss > ``converged_below``), ``2afc``, ``clustering``
            (outcomes in [0, 1]), ``optimised_against``, ``2afc_null`` (wrong-target 2AFC in
            [0, 1]), ``2afc_margin`` (2AFC minus null), ``rep_other_min``, ``rep_specific``
            (the inversion's null: nearer its own target's representation than any other's).
        sets: one row per scored (model, regularizer): ``n_iris``, ``n_unconverged``, ``n_specific``,
            ``has_specific`` (the set recorded the inversion's null),
            ``self_proxy`` (the proxy an adversarial set was optimised against, or "").
        grids: ``(model_id, regularizer, path)`` of every IRI set's ``grid.png`` (``model_id``
            with its replicate: one grid per trained model).
        skipped: what could not be read, and why.
        replicates: one row per trained model (index its id with ``-r<k>``): the columns of
            ``models`` plus ``model`` (the id without the replicate) and ``replicate``.

    With ``study.replicates`` > 1 every table is pooled over replicates: ``models`` has one
    row per model (accuracies are the mean over replicates, ``clean_acc_std`` etc. their
    std, ``n_replicates``; ``passed`` is False when any replicate is below its floor), and
    ``outcomes`` has the replicate's outcomes under the model's id with a ``replicate`` column,
    so that paired comparisons match targets within a replicate (:mod:`iri_alignment.significance`).
    """

    root: Path
    models: pd.DataFrame
    outcomes: pd.DataFrame
    sets: pd.DataFrame
    grids: list[tuple[str, str, Path]]
    skipped: list[str] = field(default_factory=list)
    replicates: pd.DataFrame | None = None


def _model_row(root: Path, model_id: str, meta_hint: dict | None, floors: dict | None = None) -> dict:
    """Meta and accuracies of one model, from metrics.json, evaluation/<id>.json and a scores summary."""
    arch, regime, epoch = parse_model_id(model_id)
    metrics = _read_json_or_none(root / "models" / model_id / "metrics.json") or {}
    evaluation = _read_json_or_none(root / "evaluation" / f"{model_id}.json")
    meta = {**(meta_hint or {}), **metrics}
    for key in ("arch", "regime", "external", "norm"):  # an external model's provenance, when no score says it
        if meta.get(key) is None and evaluation:
            meta[key] = evaluation.get(key)
    for key, parsed in (("arch", arch), ("regime", regime)):
        if meta.get(key) and meta[key] != parsed and not meta.get("external"):
            log.warning("%s: meta says %s=%s, the id says %s; using the meta", model_id, key, meta[key], parsed)
    source = evaluation if evaluation is not None else metrics
    probe = metrics.get("probe_test_acc", (meta_hint or {}).get("metrics", {}).get("probe_test_acc"))
    regime_name = meta.get("regime") or regime
    check = None
    if floors is not None and epoch is None and not (evaluation or {}).get("note"):
        check = validity.floor_check({**source, "probe_test_acc": probe}, regime_name, floors)
    return {
        "model_id": model_id, "arch": meta.get("arch") or arch, "regime": meta.get("regime") or regime, "epoch": epoch,
        "final_epoch": metrics.get("epochs", meta.get("epoch") if epoch is None else None),
        "dataset": meta.get("dataset"), "clean_acc": _percent(source.get("clean_acc")),
        "robust_acc": _percent(source.get("robust_acc")), "probe_acc": _percent(probe),
        "eps": source.get("eps", meta.get("eps")), "norm": meta.get("norm") or "l2",
        "external": bool(meta.get("external")), "attack_steps": source.get("attack_steps"),
        "accuracy_source": "evaluation" if evaluation is not None else ("metrics" if metrics else ""),
        "kind": validity.model_kind(regime_name), "passed": check["passed"] if check else pd.NA,
        "below_floor": "; ".join(check["reasons"]) if check else "",
    }


def _read_scores(path: Path, summary: dict, model_id: str, regularizer: str, converged_below: float,
                 skipped: list[str]) -> pd.DataFrame | None:
    """One per-IRI scores CSV (with its summary JSON, or {}) in the columns of :attr:`Results.outcomes`;
    None (logged) when unusable."""
    table = pd.read_csv(path)
    missing = {"proxy", "target_index", "2afc", "clustering"} - set(table.columns)
    if missing:
        skipped.append(f"{path}: lacks columns {sorted(missing)}; not used")
        log.warning(skipped[-1])
        return None
    if "index" not in table.columns:
        table["index"] = table["target_index"]
    if "rep_loss" in table.columns:
        table["unconverged"] = table["rep_loss"] > converged_below
    else:
        table["rep_loss"] = np.nan
        table["unconverged"] = ~table["converged"].astype(bool) if "converged" in table.columns else False
    if "optimised_against" not in table.columns:
        flagged = {p for p, s in summary.get("proxies", {}).items() if s.get("optimised_against")}
        table["optimised_against"] = table["proxy"].isin(flagged)
    table["optimised_against"] = table["optimised_against"].astype(bool)
    for column in OPTIONAL_COLUMNS:  # sets scored before the null columns existed
        if column not in table.columns:
            table[column] = np.nan
    table["model_id"], table["regularizer"] = model_id, regularizer
    return table.loc[:, OUTCOME_COLUMNS]


def check_scores_belong(path: Path, summary: dict, model_id: str, regularizer: str) -> None:
    """Raise ResultsError when the summary beside ``path`` says it scored another IRI set than
    ``scores/<model_id>/<regularizer>.csv`` names (a file copied or written to the wrong place)."""
    model = summary.get("model") or {}
    if model.get("external"):  # an external model's id is its entry's, not <arch>-<regime>
        if model.get("id") not in (None, model_id) or summary.get("regularizer") not in (None, regularizer):
            raise ResultsError(f"{path}: these scores are of another IRI set ({summary.get('iris', 'unknown')}): "
                               f"model {model.get('id')!r}, regularizer {summary.get('regularizer')!r}. Delete {path} "
                               f"and {path.with_suffix('.json')} and rescore.")
        return
    arch, regime, epoch = parse_model_id(model_id)
    said = {"arch": model.get("arch"), "regime": model.get("regime"), "regularizer": summary.get("regularizer")}
    wanted = {"arch": arch, "regime": regime, "regularizer": regularizer}
    wrong = [f"{k} {said[k]!r} (expected {wanted[k]!r})" for k in wanted if said[k] is not None and said[k] != wanted[k]]
    if wrong:
        raise ResultsError(f"{path}: these scores are of another IRI set ({summary.get('iris', 'unknown')}): "
                           f"{', '.join(wrong)}. Delete {path} and {path.with_suffix('.json')} and rescore "
                           f"(`iri score --iris results/iris/{model_id}/{regularizer} --out {path}` or snakemake).")


def load_results(results: str | Path, *, converged_below: float = 0.1, floors: dict | None = None) -> Results:
    """Read a results folder (layout in the module docstring) into :class:`Results`.

    Args:
        results: the results root.
        converged_below: an IRI whose rep loss is above this did not converge (default 0.1, protocol 5).
        floors: ``evaluation.floor`` (accuracy floors per kind of model, percent); None (default): no check.

    Raises:
        FileNotFoundError: ``results`` is not a folder, or holds no scores, IRI sets, models or evaluations.
        ResultsError: a score file belongs to another set, or every file there was skipped (the reasons named).
    """
    root = Path(results)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist")
    skipped: list[str] = []
    frames, hints = [], {}
    for path in sorted((root / "scores").glob("*/*.csv")):
        model_id, regularizer = path.parent.name, path.stem
        try:
            parse_model_id(model_id)
        except ValueError as err:
            skipped.append(f"{path}: {err}")
            log.warning(skipped[-1])
            continue
        summary = _read_json_or_none(path.with_suffix(".json")) or {}
        check_scores_belong(path, summary, model_id, regularizer)
        table = _read_scores(path, summary, model_id, regularizer, converged_below, skipped)
        if table is not None:
            frames.append(table)
            hints.setdefault(model_id, summary.get("model"))
    grids = []
    for grid in sorted((root / "iris").glob("*/*/grid.png")):
        model_id, regularizer = grid.parent.parent.name, grid.parent.name
        grids.append((model_id, regularizer, grid))
        hints.setdefault(model_id, (_read_json_or_none(grid.parent / "meta.json") or {}).get("model"))
    scored = {(t["model_id"].iat[0], t["regularizer"].iat[0]) for t in frames}
    for model_id, regularizer, _ in grids:
        if (model_id, regularizer) not in scored:
            skipped.append(f"iris/{model_id}/{regularizer}: no scores; only its grid is reported")
            log.info(skipped[-1])
    for folder in sorted((root / "models").glob("*")):
        if (folder / "metrics.json").is_file():
            hints.setdefault(folder.name, None)
    for path in sorted((root / "evaluation").glob("*.json")):
        hints.setdefault(path.stem, None)
    if not hints and skipped:
        raise ResultsError(f"{root} holds nothing the report can use: " + "; ".join(skipped[:5]))
    if not hints:
        raise FileNotFoundError(f"{root} holds nothing to report: no scores (scores/<model>/<regularizer>.csv), IRI "
                                "sets, models or evaluations; run the study first (snakemake, make demo) or point "
                                "--results at its results folder")

    rows = []
    for model_id, hint in sorted(hints.items()):
        try:
            rows.append(_model_row(root, model_id, hint, floors))
        except ValueError as err:
            skipped.append(f"model {model_id}: {err}")
            log.warning(skipped[-1])
    models = pd.DataFrame(rows, columns=["model_id", "arch", "regime", "epoch", "final_epoch", "dataset", "clean_acc",
                                         "robust_acc", "probe_acc", "eps", "norm", "external", "attack_steps", "accuracy_source",
                                         "kind", "passed", "below_floor"])
    models["epoch"] = models["epoch"].astype("Int64")
    models["final_epoch"] = pd.to_numeric(models["final_epoch"]).astype("Int64")
    models = models.set_index("model_id")
    replicates = models.assign(model=[base_model_id(m) for m in models.index],
                               replicate=[replicate_of(m) for m in models.index])
    models = pool_models(replicates)

    outcomes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=OUTCOME_COLUMNS)
    outcomes["replicate"] = [replicate_of(m) for m in outcomes["model_id"]]
    outcomes["model_id"] = [base_model_id(m) for m in outcomes["model_id"]]
    iris = outcomes.drop_duplicates(["model_id", "regularizer", "replicate", "index"])
    sets = iris.groupby(["model_id", "regularizer"]).agg(n_iris=("index", "size"), n_unconverged=("unconverged", "sum"),
                                                         n_specific=("rep_specific", "sum"),
                                                         has_specific=("rep_specific", lambda v: v.notna().all()))
    self_proxy = (outcomes[outcomes["optimised_against"].astype(bool)].groupby(["model_id", "regularizer"])["proxy"]
                  .first())
    sets["self_proxy"] = self_proxy.reindex(sets.index).fillna("")
    sets["n_unconverged"] = sets["n_unconverged"].astype(int)
    return Results(root, models, outcomes, sets, grids, skipped, replicates)


ACCURACIES = ("clean_acc", "robust_acc", "probe_acc")


def unplanned_sets(results: str | Path, planned: list[tuple[str, str]]) -> list[str]:
    """``model/regularizer`` of every scored IRI set under ``results`` that ``planned``
    (:func:`iri_alignment.plan.inversion_jobs` of the profile being reported) does not
    list: left there by another profile or by hand. The report still reads them."""
    found = {(path.parent.name, path.stem) for path in Path(results).glob("scores/*/*.csv")}
    return [f"{m}/{r}" for m, r in sorted(found - set(planned))]


def pool_models(replicates: pd.DataFrame) -> pd.DataFrame:
    """One row per model from one row per trained replicate (``model`` and ``replicate`` columns):
    mean accuracies with their std over replicates (``<acc>_std``, NaN for one replicate),
    ``n_replicates``, and ``passed`` False when any replicate is below its floor (its
    ``below_floor`` reasons are listed per replicate)."""
    rows = []
    for model, part in replicates.sort_values("replicate").groupby("model", sort=True):
        row = part.iloc[0].drop(["model", "replicate"]).to_dict()
        for acc in ACCURACIES:
            values = part[acc].astype(float)
            row[acc] = values.mean()
            row[f"{acc}_std"] = values.std(ddof=1) if values.notna().sum() > 1 else np.nan
        checks = part["passed"].dropna()
        row["passed"] = bool(checks.all()) if len(checks) else pd.NA
        failed = part[part["below_floor"] != ""]
        row["below_floor"] = "; ".join(
            (f"replicate {r}: {why}" if len(part) > 1 else why) for r, why in zip(failed["replicate"], failed["below_floor"]))
        row["n_replicates"] = len(part)
        rows.append({"model_id": model, **row})
    pooled = pd.DataFrame(rows)
    if pooled.empty:
        return replicates.drop(columns=["model", "replicate"]).assign(n_replicates=pd.Series(dtype="Int64"))
    pooled = pooled.set_index("model_id")
    for column in ("epoch", "final_epoch"):
        pooled[column] = pd.to_numeric(pooled[column]).astype("Int64")
    return pooled


