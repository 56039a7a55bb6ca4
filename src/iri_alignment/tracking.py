"""MLflow bookkeeping: one experiment per study and profile, one run per job.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set (any MLflow server), else
a SQLite file ``mlflow.db`` in the working directory (the repository root when
run through Snakemake, DVC or make). A pipeline invocation opens a parent run
and exports its id as ``IRI_PARENT_RUN_ID``; every job's run then carries it as
``mlflow.parentRunId``, so the UI nests the jobs under their invocation.
A run that raises (or is stopped by SIGTERM/SIGINT) ends as FAILED.

Parallel jobs and SQLite: the first process to touch a new store runs MLflow's
schema migrations, and two doing so at once corrupt them ("table
_alembic_tmp_tags already exists"); later writers can meet "database is
locked". Every store access that writes goes through :func:`store_lock`, an
exclusive file lock beside the database, so jobs on the default store queue
for a few milliseconds instead of failing. A tracking server needs no lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from iri_alignment.params import params_hash
from iri_alignment.provenance import git_commit

log = logging.getLogger(__name__)

PARENT_ENV = "IRI_PARENT_RUN_ID"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    """Hold an exclusive lock on the SQLite store (no-op for other stores)."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(uri[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _locked(fn, *args, retries: int = 5, **kwargs):
    """Call an MLflow write under the store lock, retrying if SQLite is still busy."""
    for attempt in range(retries):
        try:
            with store_lock():
                return fn(*args, **kwargs)
        except Exception as err:  # MLflow wraps SQLAlchemy's OperationalError in its own exception types
            if "database is locked" not in str(err) or attempt == retries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def experiment_name(params: dict) -> str:
    return f"{params['study']['name']}-{params['profile']}"


#: The MLflow UI opens an experiment in the view its kind names; untagged, MLflow 3 shows its GenAI
#: overview (traces, an assistant) instead of the runs table this study is read in.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def open_experiment(params: dict):
    """Set (creating if needed) the study's experiment, tagged to open in MLflow's model-training view."""
    import mlflow

    experiment = mlflow.set_experiment(experiment_name(params))
    if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        mlflow.MlflowClient(tracking_uri()).set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    return experiment


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists become strings)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


@contextlib.contextmanager
def start_run(params: dict, *, stage: str, name: str, tags: dict | None = None, log_params: dict | None = None,
              run_id: str | None = None) -> Iterator:
    """Open (or, given ``run_id``, reopen) an MLflow run for one job.

    Args:
        params: merged study params (names the experiment, gives the profile).
        stage: ``train``, ``evaluate``, ``invert``, ``score`` or ``report``.
        name: the run's display name, e.g. ``resnet18-adversarial``.
        tags: extra tags, e.g. dataset, arch, regime, params_hash.
        log_params: a (nested) dict logged as flattened params on a new run.
        run_id: resume this run instead of creating one (interrupted training).
    """
    import mlflow

    all_tags = {"stage": stage, "profile": params["profile"], "git_commit": git_commit(),
                "study_params_hash": params_hash(params), **(tags or {})}
    parent = os.environ.get(PARENT_ENV)
    if parent and not run_id:
        all_tags["mlflow.parentRunId"] = parent
    all_tags = {k: str(v) for k, v in all_tags.items()}

    def begin():
        mlflow.set_tracking_uri(tracking_uri())
        open_experiment(params)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else name, tags=all_tags)
        if log_params and not run_id:
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(log_params).items()})
        return run

    run = _locked(begin)
    log.info("MLflow run %s (%s) in experiment %s at %s", run.info.run_id, name, experiment_name(params), tracking_uri())
    try:
        yield run
    except BaseException:
        _locked(mlflow.end_run, "FAILED")
        raise
    _locked(mlflow.end_run, "FINISHED")


def log_metrics(metrics: dict, step: int | None = None) -> None:
    """Log the numeric entries of ``metrics`` (others are skipped)."""
    import mlflow

    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        _locked(mlflow.log_metrics, numeric, step=step)


def set_tags(tags: dict) -> None:
    """Tag the active run (values as strings)."""
    import mlflow

    _locked(mlflow.set_tags, {k: str(v) for k, v in tags.items()})


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Attach a file to the active run."""
    import mlflow

    _locked(mlflow.log_artifact, str(path), artifact_path)


def start_parent(params: dict, name: str) -> str:
    """Create the parent run of a pipeline invocation and return its id.
    The run stays open (RUNNING) until :func:`finish_parent`."""
    from mlflow import MlflowClient

    def create():
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        experiment = open_experiment(params)
        run = MlflowClient(tracking_uri()).create_run(
            experiment.experiment_id, run_name=name,
            tags={"stage": "pipeline", "profile": params["profile"], "git_commit": git_commit(),
                  "study_params_hash": params_hash(params)})
        return run.info.run_id

    return _locked(create)


def finish_parent(run_id: str, status: str = "FINISHED", artifacts=()) -> None:
    """Attach the existing ``artifacts`` (files or folders) and close the run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri())
    for path in map(Path, artifacts):
        if path.is_dir():
            _locked(client.log_artifacts, run_id, str(path), path.name)
        elif path.is_file():
            _locked(client.log_artifact, run_id, str(path))
    _locked(client.set_terminated, run_id, status)
