"""``iri survey analyze``: human alignment from collected answers, its reliability, and how the proxies agree.

Steps, each reported with counts:

1. **Read** the answers: the server's SQLite file, its CSV export, or JATOS's
   results (a ``.txt`` of JSON lines or the results ``.zip``). Every answer is
   joined with the study's private trial list (kind, task, set, answer), so the
   three sources are analysed alike.
2. **Exclude**, by the rules fixed in the study folder when it was built
   (``survey.exclusions`` of ``study.json``): sessions that did not answer every
   trial of their list (``require_complete``), sessions that missed more than
   ``max_failed_catch`` catch trials, and single answers faster than ``min_rt_ms``.
3. **Human alignment** per model, regularizer and task: each rater's share of
   aligned answers (the target chosen) on main trials; mean ± std over raters
   (the paper's "Evaluation: Reliability" table) and a bootstrap 95% interval
   over raters. Chance: 50% (2AFC), 33.3% (clustering).
4. **Reliability**: Krippendorff's alpha (nominal: the chosen position, the
   same for every rater of a trial), raw pairwise agreement, and split-half
   reliability of the per-set scores (raters split at random, Pearson r of the
   halves, Spearman-Brown corrected, averaged over splits).
5. **Humans vs proxies** (with ``scores``): per-trial agreement of each proxy
   with the raters, ``p h + (1 - p)(1 - h)`` for the proxy's outcome p (1, 0,
   or 0.5 for a tie) and the raters' share h choosing the target (BAPPS's
   2AFC score), and Spearman's rho and Kendall's tau-b between the human and
   the proxy ranking of the models, per task and regularizer.

The design has no wrong-target trials, so the human null of protocol 9 is
not estimated here; the proxies' null is in the score tables.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from iri_alignment.reporting.tables import Table, write_table
from iri_alignment.survey.build import read_summary

log = logging.getLogger(__name__)

CHANCE = {"2afc": 50.0, "clustering": 100.0 / 3}


class ResponsesError(ValueError):
    """The responses file cannot be read or does not belong to the study; the message says which."""


# -- reading ------------------------------------------------------------------------------------------


def _jatos_rows(path: Path) -> list[dict]:
    texts = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            texts = [z.read(n).decode() for n in z.namelist() if n.endswith(".txt")]
    else:
        texts = [path.read_text()]
    rows = []
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ResponsesError(f"{path}: a line is not JSON: {line[:80]!r}") from None
    return rows


def read_responses(path: str | Path, study: str | Path) -> pd.DataFrame:
    """Answers from a SQLite file, a CSV export or JATOS results, joined with the study's trials.

    Returns one row per answer: ``session_id, rater, trial, kind, task, set_name, model_id,
    regularizer, k, answer, response, aligned, rt_ms, completed``.
    """
    path, study = Path(path), Path(study)
    if not path.is_file():
        raise ResponsesError(f"{path} does not exist")
    trials = json.loads((study / "private" / "trials.json").read_text())
    lists = json.loads((study / "private" / "lists.json").read_text())
    practice = json.loads((study / "public" / "config.json").read_text())["practice"]
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"SQLite format 3"):
        from iri_alignment.survey.storage import Store

        try:
            raw = pd.DataFrame(Store(path).export())
        except sqlite3.DatabaseError as err:
            raise ResponsesError(f"{path}: not the study server's database ({err})") from None
        completed = raw["completed"].notna() if len(raw) else pd.Series(dtype=bool)
        raw = raw.assign(completed=completed)
    elif path.suffix == ".csv":
        raw = pd.read_csv(path)
        raw["completed"] = raw["completed"].notna() if "completed" in raw else True
    else:
        raw = pd.DataFrame(_jatos_rows(path))
        if len(raw):  # JATOS: a session is complete when it answered every trial of its list
            expected = {s: len(practice) + len(lists[int(lst)]["trials"])
                        for s, lst in raw.groupby("session_id")["list_id"].first().items()}
            counts = raw.groupby("session_id")["trial"].nunique()
            raw["completed"] = raw["session_id"].map(lambda s: counts[s] >= expected[s])
            raw["rater"] = raw.get("prolific_pid", pd.Series(index=raw.index, dtype=object)).fillna(raw["session_id"])
            raw = raw.rename(columns={"rt": "rt_ms"})
    if raw.empty:
        raise ResponsesError(f"{path} holds no answers")
    unknown = set(raw["trial"]) - set(trials)
    if unknown:
        raise ResponsesError(f"{path}: {len(unknown)} answers name trials this study does not have (e.g. "
                             f"{sorted(unknown)[0]!r}): are they from another build of the study?")
    meta = pd.DataFrame.from_dict(trials, orient="index")[["kind", "task", "set", "model_id", "regularizer", "k",
                                                           "answer"]]
    meta["kind"] = meta["kind"].map(lambda k: "catch" if str(k).startswith("catch") else k)
    out = raw[["session_id", "rater", "trial", "response", "rt_ms", "completed"]].join(meta, on="trial")
    out = out.rename(columns={"set": "set_name"}).drop_duplicates(["session_id", "trial"])
    out["aligned"] = (out["response"].astype(int) == out["answer"].astype(int)).astype(float)
    return out.reset_index(drop=True)


# -- exclusions ---------------------------------------------------------------------------------------


def apply_exclusions(answers: pd.DataFrame, rules: dict) -> tuple[pd.DataFrame, dict]:
    """Drop what ``rules`` (``survey.exclusions``) exclude; return the rest and the counts."""
    report = {"sessions": int(answers["session_id"].nunique()), "answers": len(answers)}
    keep = answers
    if rules["require_complete"]:
        incomplete = set(keep.loc[~keep["completed"].astype(bool), "session_id"])
        report["excluded_incomplete_sessions"] = len(incomplete)
        keep = keep[~keep["session_id"].isin(incomplete)]
    catch = keep[keep["kind"] == "catch"]
    failed = catch.groupby("session_id")["aligned"].apply(lambda a: int((a < 1).sum()))
    bad = set(failed[failed > rules["max_failed_catch"]].index)
    report["excluded_failed_catch_sessions"] = len(bad)
    keep = keep[~keep["session_id"].isin(bad)]
    fast = keep["rt_ms"] < rules["min_rt_ms"]
    report["dropped_fast_answers"] = int(fast.sum())
    keep = keep[~fast]
    report["kept_sessions"] = int(keep["session_id"].nunique())
    report["kept_main_answers"] = int((keep["kind"] == "main").sum())
    return keep, report


# -- alignment and reliability ------------------------------------------------------------------------


def rater_scores(main: pd.DataFrame) -> pd.DataFrame:
    """Each rater's aligned share (percent) per set (model, regularizer) and task."""
    return (main.groupby(["model_id", "regularizer", "task", "rater"])["aligned"].mean().mul(100)
            .rename("score").reset_index())


def human_alignment(main: pd.DataFrame, *, bootstrap: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per model, regularizer and task: mean ± std over raters, bootstrap 95% interval, counts."""
    rng = np.random.default_rng(seed)
    rows = []
    for (model, reg, task), part in rater_scores(main).groupby(["model_id", "regularizer", "task"]):
        scores = part["score"].to_numpy()
        boots = rng.choice(scores, size=(bootstrap, len(scores)), replace=True).mean(1)
        n_answers = int(((main["model_id"] == model) & (main["regularizer"] == reg) & (main["task"] == task)).sum())
        rows.append({"model_id": model, "regularizer": reg, "task": task, "mean": scores.mean(),
                     "std": scores.std(ddof=1) if len(scores) > 1 else np.nan, "ci_low": np.percentile(boots, 2.5),
                     "ci_high": np.percentile(boots, 97.5), "raters": len(scores), "answers": n_answers,
                     "chance": CHANCE[task]})
    return pd.DataFrame(rows)


def krippendorff_alpha_nominal(units: list[list[int]]) -> float:
    """Krippendorff's alpha for nominal values: ``units`` holds each item's values (one per rater,
    any number); items with fewer than two values do not count. 1 = perfect, 0 = chance."""
    units = [u for u in units if len(u) >= 2]
    if not units:
        return float("nan")
    values = sorted({v for u in units for v in u})
    index = {v: i for i, v in enumerate(values)}
    coincidence = np.zeros((len(values), len(values)))
    for u in units:
        counts = np.bincount([index[v] for v in u], minlength=len(values)).astype(float)
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (len(u) - 1)
    n_c = coincidence.sum(1)
    n = n_c.sum()
    observed = n - np.trace(coincidence)
    expected = (n * n - (n_c ** 2).sum()) / (n - 1)
    return float(1 - observed / expected) if expected > 0 else float("nan")


def pairwise_agreement(units: list[list[int]]) -> float:
    """The share of rater pairs giving an item the same value, averaged over items with two or more values."""
    shares = []
    for u in units:
        if len(u) >= 2:
            counts = np.bincount(u)
            shares.append(float((counts * (counts - 1)).sum() / (len(u) * (len(u) - 1))))
    return float(np.mean(shares)) if shares else float("nan")


def split_half(main: pd.DataFrame, *, splits: int = 200, seed: int = 0) -> float:
    """Spearman-Brown corrected correlation of per-(set, task) scores between random halves of the raters."""
    raters = main["rater"].unique()
    if len(raters) < 4:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(splits):
        half = set(rng.permutation(raters)[: len(raters) // 2])
        a = main[main["rater"].isin(half)].groupby(["set_name", "task"])["aligned"].mean()
        b = main[~main["rater"].isin(half)].groupby(["set_name", "task"])["aligned"].mean()
        both = pd.concat([a, b], axis=1, join="inner").dropna()
        if len(both) >= 3 and both.iloc[:, 0].std() > 0 and both.iloc[:, 1].std() > 0:
            r = float(np.corrcoef(both.iloc[:, 0], both.iloc[:, 1])[0, 1])
            values.append(2 * r / (1 + r))
    return float(np.mean(values)) if values else float("nan")


def reliability(main: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rows = []
    for task, part in main.groupby("task"):
        units = [g["response"].astype(int).tolist() for _, g in part.groupby("trial")]
        rows.append({"task": task, "krippendorff_alpha": krippendorff_alpha_nominal(units),
                     "pairwise_agreement": pairwise_agreement(units), "split_half": split_half(part, seed=seed),
                     "items": sum(len(u) >= 2 for u in units), "raters": part["rater"].nunique()})
    return pd.DataFrame(rows)


# -- humans vs proxies ------------------------------------------------------------------------------


def proxy_outcomes(scores: Path, sets: list[str]) -> pd.DataFrame:
    """Per set, proxy, IRI (``k``): the proxy's 2AFC and clustering outcomes from ``scores/<model>/<reg>.csv``."""
    frames = []
    for name in sets:
        path = scores / f"{name}.csv"
        if not path.is_file():
            log.warning("no proxy scores for %s (%s)", name, path)
            continue
        table = pd.read_csv(path)
        model, reg = name.split("/")
        frames.append(table[["proxy", "index", "2afc", "clustering"]].assign(model_id=model, regularizer=reg))
    if not frames:
        return pd.DataFrame(columns=["proxy", "k", "task", "outcome", "model_id", "regularizer"])
    wide = pd.concat(frames).rename(columns={"index": "k"})
    return wide.melt(id_vars=["model_id", "regularizer", "proxy", "k"], value_vars=["2afc", "clustering"],
                     var_name="task", value_name="outcome")


def human_vs_proxy(main: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per proxy and task: per-trial agreement with the raters; per proxy, task and regularizer:
    Spearman and Kendall tau-b of the models' rankings."""
    if outcomes.empty:
        return pd.DataFrame()
    share = main.groupby(["model_id", "regularizer", "task", "k"])["aligned"].mean().rename("h").reset_index()
    joined = outcomes.merge(share, on=["model_id", "regularizer", "task", "k"])
    rows = []
    for (proxy, task, reg), part in joined.groupby(["proxy", "task", "regularizer"]):
        p, h = part["outcome"].astype(float), part["h"]
        per_model = part.groupby("model_id")[["outcome", "h"]].mean()
        rho = tau = np.nan
        if len(per_model) >= 3 and per_model["h"].nunique() > 1 and per_model["outcome"].nunique() > 1:
            rho = stats.spearmanr(per_model["h"], per_model["outcome"]).statistic
            tau = stats.kendalltau(per_model["h"], per_model["outcome"], variant="b").statistic
        rows.append({"proxy": proxy, "task": task, "regularizer": reg,
                     "trial_agreement": float((p * h + (1 - p) * (1 - h)).mean() * 100), "trials": len(part),
                     "models": len(per_model), "spearman": rho, "kendall_tau_b": tau})
    return pd.DataFrame(rows)


# -- tables -------------------------------------------------------------------------------------------


def _fmt(mean, std) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.1f} ± {std:.1f}" if pd.notna(std) else f"{mean:.1f}"


def paper_table(human: pd.DataFrame, outcomes: pd.DataFrame, proxy: str | None, results: Path | None) -> Table:
    """The paper's layout: HUMAN 2AFC, PROXY 2AFC, HUMAN CLUSTERING, PROXY CLUSTERING, CLEAN and ROBUST ACC."""
    rows = []
    for (model, reg), part in human.groupby(["model_id", "regularizer"], sort=True):
        row = {"model": model, "regularizer": reg}
        for task, label in (("2afc", "2AFC"), ("clustering", "CLUSTERING")):
            h = part[part["task"] == task]
            row[f"HUMAN {label}"] = _fmt(h["mean"].iat[0], h["std"].iat[0]) if len(h) else "–"
            o = outcomes[(outcomes["model_id"] == model) & (outcomes["regularizer"] == reg) & (outcomes["task"] == task)
                         & (outcomes["proxy"] == proxy)] if proxy else outcomes.iloc[0:0]
            row[f"PROXY {label}"] = f"{100 * o['outcome'].astype(float).mean():.1f}" if len(o) else "–"
        evaluation = (results / "evaluation" / f"{model}.json") if results else None
        acc = json.loads(evaluation.read_text()) if evaluation and evaluation.is_file() else {}
        for key, label in (("clean_acc", "CLEAN ACC"), ("robust_acc", "ROBUST ACC")):
            row[label] = f"{100 * acc[key]:.1f}" if acc.get(key) is not None else "–"
        rows.append(row)
    notes = [f"HUMAN: mean ± std over raters of the share of aligned answers (%); PROXY: {proxy or 'no proxy'} on the "
             "same IRIs. Chance: 2AFC 50%, clustering 33.3%."]
    return Table("human_alignment", "Human and proxy alignment (%) with clean and robust accuracy (%)",
                  pd.DataFrame(rows), 2, notes)


def analyze(responses: str | Path, study: str | Path, out: str | Path, *, scores: str | Path | None = None,
            results: str | Path | None = None, proxy: str | None = None, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Run every step (module docstring); write tables into ``out`` and return the summary."""
    study, out = Path(study), Path(out)
    rules = read_summary(study)["survey"]["exclusions"]
    answers = read_responses(responses, study)
    kept, exclusions = apply_exclusions(answers, rules)
    main = kept[kept["kind"] == "main"]
    if main.empty:
        raise ResponsesError(f"no main-trial answers are left after the exclusions: {exclusions}")
    human = human_alignment(main, bootstrap=bootstrap, seed=seed)
    agreement = reliability(main, seed=seed)
    outcomes = proxy_outcomes(Path(scores), sorted(main["set_name"].unique())) if scores else pd.DataFrame()
    versus = human_vs_proxy(main, outcomes)
    if proxy is None and not outcomes.empty:
        proxy = sorted(outcomes["proxy"].unique())[0]
    out.mkdir(parents=True, exist_ok=True)
    human.to_csv(out / "human_by_set.csv", index=False)
    agreement.to_csv(out / "human_reliability.csv", index=False)
    versus.to_csv(out / "human_vs_proxy.csv", index=False)
    write_table(paper_table(human, outcomes if not outcomes.empty else pd.DataFrame(
        columns=["model_id", "regularizer", "task", "proxy", "outcome"]), proxy, Path(results) if results else None), out)
    summary = {"exclusions": exclusions, "rules": rules, "raters": int(main["rater"].nunique()),
               "human": human.to_dict("records"), "reliability": agreement.to_dict("records"),
               "human_vs_proxy": versus.to_dict("records"), "proxy": proxy}
    (out / "human_summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary

