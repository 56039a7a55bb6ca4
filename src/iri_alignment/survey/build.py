"""``iri survey build``: a self-contained study folder from IRI sets.

::

    STUDY/
      study.json          what was built: sets, counts, the study hash, the params' survey section
      public/             everything a rater's browser may read (served as is; zipped for JATOS)
        index.html, survey.js, survey.css
        vendor/           jsPsych 8 and its plugins, copied from the pinned npm packages
        img/<hash>.png    every image, named by its content hash (a name never reveals the answer)
        config.json       texts, timings, practice trials, the lists (for hosts without our server)
        trials.json       public id -> task, query, choices; answers only for practice trials
      private/            what stays with the researcher
        trials.json       every trial with its answer, model, regularizer, kind (main, catch, practice)
        lists.json        the balanced lists (public trial ids)

Trials are named publicly by an opaque id (a hash of the study seed and the
trial), so neither the page nor its network traffic tells a catch trial or
an answer from another. The build writes into a temporary folder and renames
it into place, so an interrupted build leaves no half study.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = ("index.html", "survey.js", "survey.css")


def public_id(seed: int, trial_id: str) -> str:
    return hashlib.sha256(f"{seed}:{trial_id}".encode()).hexdigest()[:12]


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_summary(study: str | Path) -> dict:
    """``study.json`` of a built study folder; a folder without one is a FileNotFoundError
    that says how to build it."""
    path = Path(study) / "study.json"
    if not path.is_file():
        raise FileNotFoundError(f"{study} is not a study folder (no study.json): build one with "
                                "`iri survey build --iris DIR ... --out STUDY`")
    return json.loads(path.read_text())


def refuse_if_answered(out: Path) -> None:
    """A study folder that holds collected answers is never replaced (they would be lost)."""
    db = out / "responses.db"
    if db.is_file():
        from iri_alignment.survey.storage import Store

        n = len(Store(db).export())
        if n:
            raise FileExistsError(f"{out} holds {n} collected answers ({db}); build the new study into another "
                                  "folder, or move the answers away first")


def build_study(iris: list[str | Path], out: str | Path, params: dict) -> dict:
    """Build the study folder ``out`` (module docstring) from IRI set folders.

    Args:
        iris: IRI set folders (``results/iris/<model_id>/<regularizer>``).
        out: the study folder (replaced if it exists).
        params: the study params (``survey``, ``scoring.clustering_seed``).

    Returns:
        ``study.json``'s content: counts, the study hash and where things are.
    """
    # here, not at the top: the server and JATOS export read study.json through this module without torch
    from iri_alignment.survey.design import make_lists, study_trials

    cfg = params["survey"]
    seed = cfg["seed"]
    refuse_if_answered(Path(out))
    main = study_trials(list(iris), params["scoring"]["clustering_seed"])
    lists, catch, practice = make_lists(main, raters_per_trial=cfg["raters_per_trial"], list_size=cfg["list_size"],
                                        catch_fraction=cfg["catch_fraction"], practice=cfg["practice_trials"], seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        images: dict[Path, str] = {}

        def image(src: Path) -> str:
            if src not in images:
                name = f"img/{hashlib.sha256(src.read_bytes()).hexdigest()[:16]}.png"
                if not (tmp / "public" / name).exists():
                    (tmp / "public" / "img").mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, tmp / "public" / name)
                images[src] = name
            return images[src]

        private, public = {}, {}
        for t in main + catch + practice:
            pid = public_id(seed, t["id"])
            query, choices = image(Path(t["query"])), [image(Path(c)) for c in t["choices"]]
            private[pid] = {"trial": t["id"], "kind": t["kind"], "set": t["set"], "model_id": t["model_id"],
                            "regularizer": t["regularizer"], "task": t["task"], "k": t["k"], "query": query,
                            "choices": choices, "answer": t["answer"]}
            public[pid] = {"task": t["task"], "query": query, "choices": choices}
            if t["kind"] == "practice":
                public[pid]["answer"] = t["answer"]
        lists = [{"id": lst["id"], "trials": [public_id(seed, tid) for tid in lst["trials"]]} for lst in lists]
        practice_ids = [public_id(seed, t["id"]) for t in practice]
        _dump(tmp / "private" / "trials.json", private)
        _dump(tmp / "private" / "lists.json", lists)
        study_hash = hashlib.sha256((tmp / "private" / "trials.json").read_bytes()
                                    + (tmp / "private" / "lists.json").read_bytes()).hexdigest()[:16]
        config = {"study_hash": study_hash, "texts": cfg["texts"], "enable_after_ms": cfg["enable_after_ms"],
                  "practice": practice_ids, "lists": lists, "completion_url": cfg["completion_url"]}
        _dump(tmp / "public" / "config.json", config)
        _dump(tmp / "public" / "trials.json", public)
        for name in PAGE_FILES:
            shutil.copyfile(STATIC / name, tmp / "public" / name)
        shutil.copytree(STATIC / "vendor", tmp / "public" / "vendor")
        sets = sorted({t["set"] for t in main})
        summary = {"study_hash": study_hash, "sets": sets, "main_trials": len(main), "catch_trials": len(catch),
                   "practice_trials": len(practice), "lists": len(lists),
                   "trials_per_list": sorted({len(lst["trials"]) for lst in lists}),
                   "raters_needed": len(lists), "images": len(images), "survey": cfg,
                   "sources": [str(Path(p)) for p in iris]}
        _dump(tmp / "study.json", summary)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
