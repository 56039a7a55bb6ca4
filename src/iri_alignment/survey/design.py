"""The trials of the human study and how they are dealt out to raters (protocol 10).

Per IRI set (one model under one regularizer), per IRI ``k``:

* **2AFC**: the IRI is the query; the choices are its target and the seed it
  started from, in a seeded order. The aligned answer is the target.
* **clustering**: the IRI is the query; the candidates are its own target and
  two targets of other classes (the triplet the proxies scored,
  :func:`iri_alignment.scoring.clustering_triplets`). The aligned answer is the own target.

Button orders come from one ``np.random.default_rng(scoring.clustering_seed)``
drawn in trial order, exactly as ``iri export-human`` draws them, so a proxy
and a person see the same choices in the same places.

**Catch trials** have a known answer: the query is the target itself, shown
among the same choices (2AFC: target vs seed; clustering: target vs two other
targets); a rater who misses one is not looking. **Practice trials** are
catch-like trials with feedback, shown first and never analysed.

**Lists** balance the raters: the main trials are shuffled ``k`` times
(``survey.raters_per_trial``) and each shuffle is cut into lists of at most
``survey.list_size`` trials, so every main trial is in exactly ``k`` lists and
never twice in one; each list gets its own catch trials (``catch_fraction`` of
its size, at least one) and the same practice trials. The server hands each
new session the least-filled list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iri_alignment.irisets import IRISet, read_iriset, seed_ids, seed_png
from iri_alignment.scoring import clustering_triplets

TASKS = ("2afc", "clustering")


@dataclass(frozen=True)
class SetTrials:
    """The 2AFC and clustering trials of one IRI set; images as source paths."""

    model: dict
    regularizer: str
    afc: list[dict]         # {"k", "query", "choices" [2 paths], "answer"}
    clustering: list[dict]  # {"k", "query", "choices" [3 paths], "answer"}


def set_trials(iriset: IRISet, seed: int) -> SetTrials:
    """The trials of one IRI set (module docstring); ``seed`` is ``scoring.clustering_seed``."""
    folder = iriset.folder
    triplets = clustering_triplets(iriset.labels, seed)
    rng = np.random.default_rng(seed)
    ids = seed_ids(iriset.table)
    iri = lambda k: folder / "iris" / f"{k:04d}.png"  # noqa: E731
    target = lambda k: folder / "targets" / f"{k:04d}.png"  # noqa: E731
    afc = []
    for k in range(len(iriset.labels)):
        choices = [target(k), folder / seed_png(int(ids[k]))]
        order = rng.permutation(2)
        afc.append({"k": k, "query": iri(k), "choices": [choices[i] for i in order],
                    "answer": int(np.flatnonzero(order == 0)[0])})
    clus = [{"k": k, "query": iri(k), "choices": [target(int(j)) for j in row],
             "answer": int(np.flatnonzero(row == k)[0])} for k, row in enumerate(triplets)]
    return SetTrials(iriset.meta["model"], iriset.meta["regularizer"], afc, clus)


def study_trials(iris: list[str | Path], seed: int) -> list[dict]:
    """Every main trial of the study: ``{"id", "set", "model_id", "regularizer", "task", "k", "query",
    "choices", "answer", "kind": "main"}`` with source image paths; ids ``<set>/<task>/<k>``, where
    the set is named by its folder, ``results/iris/<model_id>/<regularizer>``."""
    trials = []
    for folder in iris:
        st = set_trials(read_iriset(folder), seed)
        name = f"{Path(folder).resolve().parent.name}/{st.regularizer}"
        for task, items in (("2afc", st.afc), ("clustering", st.clustering)):
            for t in items:
                trials.append({"id": f"{name}/{task}/{t['k']}", "set": name, "model_id": name.split("/")[0],
                               "regularizer": st.regularizer, "task": task, "k": t["k"], "query": t["query"],
                               "choices": t["choices"], "answer": t["answer"], "kind": "main"})
    return trials


def known_answer_trial(trial: dict, kind: str, rng: np.random.Generator) -> dict:
    """A catch or practice trial from a main trial: its target is the query, among the same choices
    (the choices shuffled again, so the answer's place does not repeat the main trial's)."""
    target = trial["choices"][trial["answer"]]
    order = rng.permutation(len(trial["choices"]))
    choices = [trial["choices"][i] for i in order]
    return {**trial, "id": f"{kind}/{trial['id']}", "kind": kind, "query": target, "choices": choices,
            "answer": int(np.flatnonzero(order == trial["answer"])[0])}


def make_lists(main: list[dict], *, raters_per_trial: int, list_size: int, catch_fraction: float,
               practice: int, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Deal the main trials into balanced lists (module docstring).

    Returns:
        ``(lists, catch, practice)``: ``lists`` is ``[{"id", "trials": [ids of main and catch
        trials]}]``; ``catch`` and ``practice`` are the known-answer trials they use.
    """
    if not main:
        raise ValueError("no trials: give at least one IRI set")
    rng = np.random.default_rng(seed)
    by_task = {task: [t for t in main if t["task"] == task] for task in TASKS}
    practice_trials = []
    for i in range(practice):  # alternate the tasks, from trials spread over the study
        pool = by_task[TASKS[i % 2]] or main
        practice_trials.append(known_answer_trial(pool[int(rng.integers(len(pool)))], "practice", rng))
    ids = [t["id"] for t in main]
    per_list = math.ceil(len(ids) / math.ceil(len(ids) / list_size))  # even lists, none above list_size
    lists, catch = [], []
    for _ in range(raters_per_trial):
        order = [ids[i] for i in rng.permutation(len(ids))]
        for start in range(0, len(order), per_list):
            chunk = order[start:start + per_list]
            n_catch = max(1, round(catch_fraction * len(chunk))) if catch_fraction > 0 else 0
            own = [known_answer_trial(main[ids.index(tid)], f"catch{len(lists)}", rng)
                   for tid in rng.choice(chunk, size=min(n_catch, len(chunk)), replace=False)]
            catch += own
            lists.append({"id": len(lists), "trials": chunk + [c["id"] for c in own]})
    return lists, catch, practice_trials
