"""The ``iri score`` and ``iri export-human`` jobs: alignment of one IRI set.

Scoring (protocol 6) reads an IRI set through its 8-bit PNGs and, for every
proxy ``d``, computes per IRI ``x'`` with target ``x`` and seed ``x0``:

- 2AFC: aligned when ``d(x', x) < d(x', x0)``; a tie counts one half
  (``scoring.ties: aligned`` restores the authors' count-as-aligned);
- clustering: the nearest of three candidates (own target and two targets of
  other classes, seeded) is the own target; chance 1/3;
- the null of 2AFC: the same 2AFC against the two other-class candidates
  (``2afc_null``), and the target-specific margin ``2afc - 2afc_null``.

It writes every per-IRI distance and outcome (CSV), and a summary (JSON): per
proxy the mean, std, n and bootstrap 95% interval over targets, and the
paper's mean +- std over proxies. An adversarial IRI set is scored by every
proxy; the one it was optimised against is flagged and left out of the
``other_proxies`` summary. The human export writes the same triplets.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from iri_alignment import scoring
from iri_alignment.io import atomic_write, write_json
from iri_alignment.plan import model_id
from iri_alignment.irisets import read_iriset, seed_ids, seed_png
from iri_alignment.proxies import get_proxy, paired, pairwise
from iri_alignment.tracking import log_metrics, start_run

log = logging.getLogger(__name__)

TASKS = ("2afc", "clustering")
# Summarised per proxy beside the tasks: the wrong-target null of 2AFC and the margin 2AFC - null.
NULL_COLUMNS = ("2afc_null", "2afc_margin")
# The inversion's own null, from the IRI set (generation): copied into the scores for the report.
INVERSION_NULL = ("rep_other_min", "rep_specific")


def optimised_against(meta: dict) -> str | None:
    """The proxy an adversarial IRI set was pushed away from, else None."""
    if meta.get("regularizer") == "adversarial":
        return (meta.get("section") or {}).get("proxy")
    return None


def score_iriset(iriset, proxies, *, ties: str, clustering_seed: int, bootstrap: int, device) -> tuple[pd.DataFrame, dict]:
    """Per-IRI table and summary of one IRI set under each proxy."""
    labels = iriset.labels
    triplets = scoring.clustering_triplets(labels, clustering_seed)
    against = optimised_against(iriset.meta)
    frames, summary = [], {"proxies": {}}
    for name in proxies:
        proxy = get_proxy(name, device=device)
        d_target = paired(proxy, iriset.iris, iriset.targets).cpu().numpy()
        d_seed = paired(proxy, iriset.iris, iriset.seed).cpu().numpy()
        d_cand = pairwise(proxy, iriset.iris, iriset.targets, index=triplets).cpu().numpy()
        outcome = {"2afc": scoring.two_afc(d_target, d_seed, ties), "clustering": scoring.clustering(d_cand, triplets)}
        outcome["2afc_null"] = scoring.null_two_afc(d_cand, triplets, d_seed, ties)
        outcome["2afc_margin"] = outcome["2afc"] - outcome["2afc_null"]
        frames.append(pd.DataFrame({
            "proxy": name, "index": iriset.table["index"], "target_index": iriset.table["target_index"], "label": labels,
            "rep_loss": iriset.table["rep_loss"], "converged": iriset.table["converged"],
            "seed": seed_ids(iriset.table), "d_target": d_target, "d_seed": d_seed, "2afc": outcome["2afc"],
            "2afc_null": outcome["2afc_null"], "2afc_margin": outcome["2afc_margin"],
            **{f"candidate_{j}": triplets[:, j] for j in range(triplets.shape[1])},
            **{f"d_candidate_{j}": d_cand[:, j] for j in range(triplets.shape[1])},
            "clustering": outcome["clustering"], "optimised_against": name == against,
            **{c: iriset.table[c] for c in INVERSION_NULL if c in iriset.table.columns},
        }))
        summary["proxies"][name] = {
            **{task: scoring.summarise(outcome[task], bootstrap, clustering_seed) for task in (*TASKS, *NULL_COLUMNS)},
            "ties": scoring.count_ties(d_target, d_seed), "optimised_against": name == against,
        }
        got = summary["proxies"][name]
        log.info("%s: 2AFC %.1f%% (null %.1f%%, margin %+.1f), clustering %.1f%%", name, got["2afc"]["mean"],
                 got["2afc_null"]["mean"], got["2afc_margin"]["mean"], got["clustering"]["mean"])
    per = summary["proxies"]
    summary["over_proxies"] = {task: scoring.summarise_over_proxies({p: per[p][task]["mean"] for p in per}) for task in TASKS}
    others = {p: v for p, v in per.items() if not v["optimised_against"]}
    if against and others:
        summary["other_proxies"] = {task: scoring.summarise_over_proxies({p: others[p][task]["mean"] for p in others})
                                    for task in TASKS}
    summary["pct_converged"] = float(100 * iriset.table["converged"].mean())
    summary["n"] = len(labels)
    return pd.concat(frames, ignore_index=True), summary


def score(params: dict, *, iris: str | Path, proxies, out: str | Path, device) -> dict:
    """Score an IRI set folder; write ``out`` (per-IRI CSV) and ``out`` with
    ``.json`` (summary); log both to MLflow; return the summary."""
    cfg = params["scoring"]
    iriset = read_iriset(iris)
    meta = iriset.meta
    out = Path(out)
    model = meta["model"]
    tags = {"dataset": model["dataset"], "arch": model["arch"], "regime": model["regime"],
            "regularizer": meta["regularizer"], "params_hash": meta["hash"], "iris": str(iris),
            "replicate": model.get("replicate", 0)}
    mid = model["id"] if model.get("external") else model_id(model["arch"], model["regime"], replicate=model.get("replicate", 0))
    name = f"{mid}-{meta['regularizer']}"
    with start_run(params, stage="score", name=name, tags=tags,
                   log_params={"proxies": ",".join(proxies), "ties": cfg["ties"], "clustering_seed": cfg["clustering_seed"],
                               "bootstrap": cfg["bootstrap"]}):
        table, summary = score_iriset(iriset, proxies, ties=cfg["ties"], clustering_seed=cfg["clustering_seed"],
                                      bootstrap=cfg["bootstrap"], device=device)
        summary = {"iris": str(iris), "model": model, "regularizer": meta["regularizer"], "ties_policy": cfg["ties"], **summary}
        with atomic_write(out, "w") as fh:
            table.to_csv(fh, index=False)
        write_json(out.with_suffix(".json"), summary)
        for name, s in summary["proxies"].items():
            log_metrics({f"{task}_{name}": s[task]["mean"] for task in (*TASKS, *NULL_COLUMNS)})
        log_metrics({f"{task}_mean_over_proxies": summary["over_proxies"][task]["mean"] for task in TASKS})
    return summary


def export_human(params: dict, *, iris: str | Path, out: str | Path) -> dict:
    """Write the trials a human study would show: images and ``manifest.json``.

    2AFC trials show the IRI as the query and its target and its seed as the
    two choices (order seeded); clustering trials show the IRI and the same
    three candidates the proxies scored. ``answer`` is the aligned choice.
    """
    from iri_alignment.survey.design import set_trials

    out = Path(out)
    seed = params["scoring"]["clustering_seed"]
    trials = set_trials(read_iriset(iris), seed)
    (out / "images").mkdir(parents=True, exist_ok=True)

    def copied(src: Path) -> str:  # images/<iri|target>-NNNN.png, images/seed[-k].png
        name = f"images/{src.name}" if src.name.startswith("seed") else f"images/{src.parent.name[:-1]}-{src.stem}.png"
        if not (out / name).exists():
            shutil.copyfile(src, out / name)
        return name

    afc = [{"trial": t["k"], "query": copied(t["query"]), "choices": [copied(c) for c in t["choices"]],
            "answer": t["answer"]} for t in trials.afc]
    clus = [{"trial": t["k"], "query": copied(t["query"]), "candidates": [copied(c) for c in t["choices"]],
             "answer": t["answer"]} for t in trials.clustering]
    iriset = read_iriset(iris)
    manifest = {"source": str(iris), "model": iriset.meta["model"], "regularizer": iriset.meta["regularizer"],
                "instructions": {"2afc": "Which of the two images is closer to the query image?",
                                 "clustering": "Choose the candidate most perceptually similar to the query image."},
                "clustering_seed": seed, "2afc": afc, "clustering": clus}
    write_json(out / "manifest.json", manifest)
    return {"trials_2afc": len(afc), "trials_clustering": len(clus), "out": str(out)}
