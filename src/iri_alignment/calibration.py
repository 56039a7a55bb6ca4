"""``iri calibrate`` (``make calibrate``): does a profile train every model to
its targets on any machine?

A calibration found on one CPU can fail on another: float reductions differ
between CPUs and thread counts, and a thin network at the edge of
trainability amplifies that (the embedded AT VGG16 once reached 76.6% clean
on one machine and stayed at chance, 13.2%, on another). So every model of
the profile is trained once per seed in ``calibration.seeds`` and per torch
thread count in ``calibration.threads`` (a different reduction order stands
in for a different CPU), each in its own ``iri train`` process (as many side
by side as the cores allow: two 1-thread runs on 2 cores), and checked
against ``calibration.targets`` (:mod:`iri_alignment.validity`). The table
gives every run and, per model, the worst run's margin to its targets.

Runs go to ``OUT/<model_id>/seed-<s>-threads-<t>/`` and are reused when rerun
(an interrupted calibration resumes). MLflow records them in their own
experiment (``<study>-calibration-<profile>``), away from the study's runs.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from iri_alignment import plan, validity
from iri_alignment.io import atomic_write, read_json, write_json
from iri_alignment.provenance import machine, machine_line
from iri_alignment.training import run_hash

log = logging.getLogger(__name__)


_RUNNING: set[subprocess.Popen] = set()  # training processes now running, stopped if calibrate is interrupted
_LOCK = threading.Lock()


def _stop_running() -> None:
    """Terminate every training process still running (each resumes from its last epoch next time)."""
    with _LOCK:
        running = list(_RUNNING)
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass(frozen=True)
class CalibrationRun:
    arch: str
    regime: str
    seed: int
    threads: int

    @property
    def model_id(self) -> str:
        return plan.model_id(self.arch, self.regime)

    def folder(self, out: Path) -> Path:
        return out / self.model_id / f"seed-{self.seed}-threads-{self.threads}"


def calibration_runs(params: dict, seeds=None, threads=None, models=None) -> list[CalibrationRun]:
    """Every (model, seed, threads) run, longest training first within a seed."""
    seeds = params["calibration"]["seeds"] if seeds is None else seeds
    threads = params["calibration"]["threads"] if threads is None else threads
    pairs = [(a, r) for a, r in plan.trained_models(params) if not models or plan.model_id(a, r) in models]
    if models:
        unknown = set(models) - {plan.model_id(a, r) for a, r in pairs}
        if unknown:
            known = ", ".join(plan.model_id(a, r) for a, r in plan.trained_models(params))
            raise ValueError(f"--model {', '.join(sorted(unknown))}: not trained by this profile; choose from {known}")
    pairs.sort(key=lambda ar: -plan.training_priority(params, ar[1]))
    return [CalibrationRun(a, r, s, t) for s in seeds for t in threads for a, r in pairs]


def _run_done(folder: Path, expected_hash: str) -> dict | None:
    """The recorded result of a finished run with the same settings, else None."""
    path = folder / "calibration.json"
    if not path.is_file():
        return None
    row = read_json(path)
    return row if row.get("params_hash") == expected_hash else None


def train_one(run: CalibrationRun, params: dict, *, params_file: str, out: Path, overrides=()) -> dict:
    """Train and evaluate one run in its own ``iri`` process; return its row."""
    seeded = {**params, "study": {**params["study"], "seed": run.seed}}
    expected = run_hash(seeded, params["data"]["dataset"], run.arch, run.regime)
    folder = run.folder(out)
    done = _run_done(folder, expected)
    if done is not None:
        log.info("%s seed %d threads %d: done before, reused", run.model_id, run.seed, run.threads)
        return done
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "iri_alignment.cli", "--threads", str(run.threads),
           *[arg for item in overrides for arg in ("--set", item)], "--set", f"study.seed={run.seed}", "--set", f"study.name={params['study']['name']}-calibration",
           "train", "--arch", run.arch, "--regime", run.regime, "--out", str(folder), "--replace-stale", "--no-progress",
           "--params", params_file, "--profile", params["profile"]]
    env = {**os.environ, "OMP_NUM_THREADS": str(run.threads)}
    log.info("training %s seed %d with %d thread(s): log in %s", run.model_id, run.seed, run.threads, folder / "train.log")
    start = time.perf_counter()
    with open(folder / "train.log", "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        with _LOCK:
            _RUNNING.add(proc)
        try:
            proc.wait()
        finally:
            with _LOCK:
                _RUNNING.discard(proc)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        raise RuntimeError(f"{run.model_id} seed {run.seed} threads {run.threads} failed (exit {proc.returncode}); "
                           f"see {folder / 'train.log'}")
    metrics = read_json(folder / "metrics.json")
    acc = validity.accuracies(metrics)
    kind = validity.model_kind(run.regime)
    row = {"model": run.model_id, "kind": kind, "seed": run.seed, "threads": run.threads, **acc,
           "minutes": round(minutes, 2), "params_hash": expected}
    write_json(folder / "calibration.json", row)
    return row


def summarise(rows: pd.DataFrame, targets: dict) -> pd.DataFrame:
    """Per model: the range of each accuracy over runs, and the worst margin to each target
    (value minus a minimum bound, or a maximum bound minus the value; negative: missed)."""
    out = []
    for model, part in rows.groupby("model", sort=False):
        kind = part["kind"].iat[0]
        entry = {"model": model, "kind": kind, "runs": len(part), "met": int(part["met"].sum())}
        for metric in ("clean", "robust", "probe"):
            values = part[metric].dropna()
            entry[metric] = f"{values.min():.1f}-{values.max():.1f}" if len(values) else "–"
        margins = []
        for key, bound in targets[kind].items():
            metric, is_min = validity.BOUNDS[key]
            values = part[metric]
            worst = (values - bound).min() if is_min else (bound - values).min()
            margins.append(f"{metric} {'>=' if is_min else '<='} {bound:g}: {worst:+.1f}")
        entry["worst margin"] = "; ".join(margins)
        entry["minutes"] = f"{part['minutes'].min():.1f}-{part['minutes'].max():.1f}"
        out.append(entry)
    return pd.DataFrame(out)


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def to_markdown(rows: pd.DataFrame, summary: pd.DataFrame, params: dict, info: dict) -> str:
    """The calibration report: per-model summary, then every run."""
    runs = rows.assign(**{m: rows[m].map(_fmt) for m in ("clean", "robust", "probe")},
                       met=rows["met"].map({True: "yes", False: "NO"}))
    runs = runs.loc[:, ["model", "seed", "threads", "clean", "robust", "probe", "minutes", "met", "missed"]]
    targets = "; ".join(f"{kind}: " + ", ".join(f"{k} {v:g}" for k, v in b.items())
                        for kind, b in params["calibration"]["targets"].items())
    return "\n".join([
        f"**Calibration of profile `{params['profile']}`**: every model trained per seed and torch thread count "
        f"(accuracy in %, test set, l2 PGD at each model's eps; minutes of wall time per run).",
        "", f"Machine: {machine_line(info)}.", f"Targets (%): {targets} (robust_max is a maximum).", "",
        summary.to_markdown(index=False, disable_numparse=True), "", runs.to_markdown(index=False, disable_numparse=True), ""])


def calibrate(params: dict, *, params_file: str, out: str | Path, seeds=None, threads=None, models=None,
              overrides=()) -> dict:
    """Run the calibration matrix; write ``calibration.{csv,md,json}`` into ``out``.

    ``overrides`` (``KEY=VALUE``, as ``iri --set``) are passed on to every training run.

    Returns ``{"passed": bool, "missed": [...], "table": path}``; every run that
    misses a target is listed in ``missed``.
    """
    from iri_alignment.data import prepare

    out = Path(out)
    data = params["data"]
    if data["dataset"] != "imagenet":
        prepare(data["dataset"], data["root"], shapes=data["shapes"], download=True)
    targets = params["calibration"]["targets"]
    runs = calibration_runs(params, seeds, threads, models)
    done: dict[CalibrationRun, dict] = {}
    cores = os.cpu_count() or 1
    for count in sorted({r.threads for r in runs}):
        group = [r for r in runs if r.threads == count]
        side_by_side = max(1, cores // count)  # fill the cores: two 1-thread runs at once on 2 cores
        log.info("%d runs with %d thread(s), %d at a time", len(group), count, side_by_side)
        pool = ThreadPoolExecutor(side_by_side)
        try:
            futures = {r: pool.submit(train_one, r, params, params_file=params_file, out=out, overrides=overrides)
                       for r in group}
            done.update({r: f.result() for r, f in futures.items()})
        except BaseException:  # Ctrl-C, SIGTERM or a failed run: start nothing more, stop what runs
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_running()
            raise
        pool.shutdown()
    rows = []
    for run in runs:
        row = done[run]
        missed = validity.check({m: row[m] for m in ("clean", "robust", "probe")}, targets[row["kind"]])
        rows.append({**row, "met": not missed, "missed": "; ".join(missed)})
        log.info("%s seed %d threads %d: clean %s robust %s probe %s, %.1f min%s", row["model"], row["seed"],
                 row["threads"], _fmt(row["clean"]), _fmt(row["robust"]), _fmt(row["probe"]), row["minutes"],
                 "" if not missed else f"; MISSED {'; '.join(missed)}")
    table = pd.DataFrame(rows)
    summary = summarise(table, targets)
    info = machine(threads=None)
    info["torch_threads"] = ",".join(map(str, sorted(set(table["threads"]))))
    with atomic_write(out / "calibration.csv", "w") as fh:
        table.drop(columns=["params_hash"]).to_csv(fh, index=False)
    with atomic_write(out / "calibration.md", "w") as fh:
        fh.write(to_markdown(table, summary, params, info))
    missed = [f"{r['model']} seed {r['seed']} threads {r['threads']}: {r['missed']}" for r in rows if not r["met"]]
    write_json(out / "calibration.json", {"profile": params["profile"], "machine": info, "targets": targets,
                                          "passed": not missed, "missed": missed, "runs": table.to_dict("records")})
    return {"passed": not missed, "missed": missed, "table": str(out / "calibration.md")}
