"""Where a DAG run's time went: per stage, from Snakemake's benchmark files.

Every rule writes ``results/benchmarks/<rule>/<job>.tsv`` (Snakemake's
``benchmark:`` directive: ``s`` wall seconds and ``cpu_time`` CPU seconds of
the job's process tree, start-up included). :func:`summarise` turns them into
one row per stage (rule): jobs, wall seconds summed over jobs, CPU minutes, and
the mean per job; and the run's span, from the first job's start (its file's
modification time minus its wall time) to the last job's end. The span is the
demo's wall time after Snakemake's own start; "the rest" is the span times the
cores minus the summed job wall time: cores left idle while the DAG waited
on its longest chain.

``iri timings`` writes ``results/tables/timings.{md,json}``; ``make demo`` runs it
after the DAG, and the README quotes the table. When the jobs ran in a fork server
(``iri workers run``, as ``make demo`` does; :mod:`iri_alignment.forkserver`) their work
happened outside the process the benchmark measures, so there is no CPU column
(``--forked``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from iri_alignment.io import atomic_write
from iri_alignment.provenance import machine_line

log = logging.getLogger(__name__)

#: the order stages run in; others follow alphabetically
STAGES = ("prepare_data", "train", "train_contrastive", "evaluate", "invert", "score", "report", "validity")


def read_benchmarks(folder: str | Path) -> pd.DataFrame:
    """One row per job: ``stage``, ``job``, ``s`` (wall), ``cpu_time``, ``end`` (epoch seconds)."""
    rows = []
    for path in sorted(Path(folder).glob("*/*.tsv")):
        table = pd.read_csv(path, sep="\t")
        if table.empty or "s" not in table.columns:
            log.warning("%s: not a Snakemake benchmark file; skipped", path)
            continue
        last = table.iloc[-1]  # a rerun with `repeat` appends rows; the last is this run's
        cpu = float(last["cpu_time"]) if "cpu_time" in table.columns and pd.notna(last["cpu_time"]) else float("nan")
        rows.append({"stage": path.parent.name, "job": path.stem, "s": float(last["s"]), "cpu_time": cpu,
                     "end": path.stat().st_mtime})
    return pd.DataFrame(rows, columns=["stage", "job", "s", "cpu_time", "end"])


def summarise(jobs: pd.DataFrame, cores: int) -> dict:
    """Per-stage totals and the run's span (see the module docstring)."""
    if jobs.empty:
        return {"stages": [], "span_s": 0.0, "job_s": 0.0, "cores": cores, "jobs": 0}
    rank = {s: i for i, s in enumerate(STAGES)}
    stages = []
    for stage, part in sorted(jobs.groupby("stage"), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])):
        stages.append({"stage": stage, "jobs": len(part), "wall_min": part["s"].sum() / 60,
                       "cpu_min": part["cpu_time"].sum() / 60, "mean_s": part["s"].mean(), "max_s": part["s"].max()})
    span = float(jobs["end"].max() - (jobs["end"] - jobs["s"]).min())
    return {"stages": stages, "span_s": span, "job_s": float(jobs["s"].sum()), "cores": cores, "jobs": len(jobs)}


def markdown(summary: dict, machine: dict | None = None) -> str:
    """The table the README quotes."""
    forked = summary.get("forked", False)
    lines = ["| stage | jobs | job minutes (wall, summed) | CPU minutes | mean s/job | longest s |",
             "|---|---|---|---|---|---|"]
    for s in summary["stages"]:
        cpu = "–" if forked else f"{s['cpu_min']:.1f}"
        lines.append(f"| {s['stage']} | {s['jobs']} | {s['wall_min']:.1f} | {cpu} | {s['mean_s']:.0f} | "
                     f"{s['max_s']:.0f} |")
    span_min, job_min = summary["span_s"] / 60, summary["job_s"] / 60
    idle = max(span_min * summary["cores"] - job_min, 0.0)
    how = ("each job a fork of one `iri workers run` server, so CPU time is not measured" if forked
           else "start-up of each `iri` process included")
    lines += ["", f"{summary['jobs']} jobs in {span_min:.1f} min wall on {summary['cores']} cores "
                  f"({span_min * summary['cores']:.1f} core-minutes): {job_min:.1f} in jobs ({how}), "
                  f"{idle:.1f} with a core idle while the DAG waited on its longest chain."]
    if machine:
        lines += ["", f"Machine: {machine_line(machine)}."]
    return "\n".join(lines) + "\n"


def write_timings(benchmarks: str | Path, out_tables: str | Path, *, cores: int | None = None,
                  machine: dict | None = None, forked: bool = False) -> dict:
    """Read ``benchmarks``, write ``timings.md`` and ``timings.json`` into ``out_tables``; return the summary
    (``forked``: the jobs ran in a fork server, so the benchmark's CPU times are not theirs)."""
    out_tables = Path(out_tables)
    out_tables.mkdir(parents=True, exist_ok=True)
    summary = {**summarise(read_benchmarks(benchmarks), cores or os.cpu_count() or 1), "forked": forked}
    with atomic_write(out_tables / "timings.md", "w") as fh:
        fh.write(markdown(summary, machine))
    with atomic_write(out_tables / "timings.json", "w") as fh:
        json.dump({**summary, "machine": machine}, fh, indent=2)
        fh.write("\n")
    return summary
