"""Process start-up: what each job of the DAG pays before it does any work, as its own
process and forked from the fork server (:mod:`iri_alignment.forkserver`), and how
many jobs pay it."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from iri_alignment.bench.race import error_text


#: what a training, inversion or scoring job imports before it does anything (the CLI imports torch lazily)
JOB_IMPORTS = "import torch, iri_alignment.training, iri_alignment.inversion, iri_alignment.scoring"


def bench_startup(*, repeats: int = 3, profile: str = "embedded", dag: bool = True) -> dict:
    """Wall seconds (median of ``repeats``) of a Python process that imports the
    CLI, of ``iri --help`` and of one that imports what a job imports; with ``dag``, the job count of the profile's DAG
    (``snakemake -n -F``), each job being one such process."""
    bin_dir = Path(sys.executable).parent
    commands = {"import iri_alignment.cli": [sys.executable, "-c", "import iri_alignment.cli"],
                "iri --help": [str(bin_dir / "iri"), "--help"],
                JOB_IMPORTS: [sys.executable, "-c", JOB_IMPORTS]}
    out: dict = {"seconds": {}}
    for label, cmd in commands.items():
        try:
            out["seconds"][label] = statistics.median(
                _wall(cmd) for _ in range(repeats))
        except Exception as err:  # noqa: BLE001
            out["seconds"][label] = None
            out.setdefault("errors", {})[label] = error_text(err)
    try:
        out["job"] = job_startup(repeats=repeats)
    except Exception as err:  # noqa: BLE001
        out["job"] = None
        out.setdefault("errors", {})["job"] = error_text(err)
    out["dag_jobs"] = dag_jobs(profile) if dag else None
    return out


#: a job that does nothing but start: torch (``--threads``), MLflow, its SQLite store, one run
STARTUP_JOB = ("--threads", "1", "tracking", "start", "--name", "bench-startup")


def job_startup(*, repeats: int = 3) -> dict | None:
    """Wall seconds (median of ``repeats``, after one warm-up each) of :data:`STARTUP_JOB` as its own
    process and forked from a fork server (:mod:`iri_alignment.forkserver`), timed alternately;
    None without a ``params.yaml`` here."""
    import tempfile

    from iri_alignment.forkserver import ENV, running_server

    if not Path("params.yaml").exists():
        return None
    cmd = [str(Path(sys.executable).parent / "iri"), *STARTUP_JOB]
    with tempfile.TemporaryDirectory() as tmp, running_server() as socket_path:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        env.pop(ENV, None)
        variants = {"own process": env, "forked": {**env, ENV: socket_path}}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(repeats + 1):
            for name, variant_env in variants.items():
                seconds = _wall(cmd, variant_env)
                if round_:
                    times[name].append(seconds)
    own, forked = (statistics.median(times[name]) for name in variants)
    return {"command": "iri " + " ".join(STARTUP_JOB), "own_process_s": own, "forked_s": forked,
            "ratio": own / forked}


def _wall(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=120, env=env)
    return time.perf_counter() - start


def dag_jobs(profile: str) -> int | None:
    """Jobs of the whole DAG of ``profile`` (``snakemake -n -F``), or None where it cannot run."""
    snakemake = Path(sys.executable).parent / "snakemake"
    if not (snakemake.exists() and Path("Snakefile").exists()):
        return None
    cmd = [str(snakemake), "-n", "-F", "--nolock", "--quiet", "rules", "--config", f"profile={profile}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.findall(r"^total\s+(\d+)\s*$", done.stdout + done.stderr, flags=re.MULTILINE)
    return int(match[-1]) if match else None
