"""The study DAG end to end, the way a user runs it: `dvc repro` in a copy of
the repository on the smoke profile. DVC stages call Snakemake with
`--cores all` (parallel jobs on the default SQLite MLflow store), then:

- a scoring parameter change reruns scoring and the report and trains nothing;
- a training parameter of one regime reruns that regime's models and what
  depends on them, and nothing else.

One module-scoped run feeds every test; this is the slowest file of the suite.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from iri_alignment.forkserver import ENV as FORKSERVER_ENV
from iri_alignment.forkserver import running_server

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(Path(cwd, "results").rglob("*.log")))
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{logs}")
    return proc.stdout + proc.stderr


def _set(params_file: Path, path: str, value) -> None:
    raw = yaml.safe_load(params_file.read_text())
    node = raw
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def _mtimes(root: Path, pattern: str) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.glob(pattern))}


@pytest.fixture(scope="module")
def forkserver():
    """One fork server for the file's DAG runs, as `make demo` runs them (`iri workers run`)."""
    with running_server() as path:
        yield path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, repo, forkserver):
    """A fresh copy of the repository (tracked and new files) with the smoke
    profile selected, after one complete `dvc repro`; its jobs fork from one server."""
    ws = tmp_path_factory.mktemp("study")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (repo / name).is_file():
            (ws / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, ws / name)
    _set(ws / "params.yaml", "profile", "smoke")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IRI_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env[FORKSERVER_ENV] = forkserver
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        _run(cmd, ws, env)
    out = _run([str(BIN / "dvc"), "repro"], ws, env)
    return ws, env, out


def test_the_smoke_dag_produces_tables_figures_and_a_lock(workspace):
    ws, _, _ = workspace
    tables = ws / "results" / "tables"
    for name in ("alignment_by_regularizer", "proxies", "architecture_loss", "augmentation", "simclr_epochs"):
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{name}.{ext}").is_file(), f"{name}.{ext}"
    assert (tables / "significance.csv").is_file() and (tables / "significance.md").is_file()
    assert list((ws / "results" / "figures" / "grids").glob("*.png"))
    assert (ws / "results" / "figures" / "alignment_by_regularizer.png").is_file()
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"params", "data", "train", "evaluate", "invert", "score", "report", "diagnostics",
                                   "survey", "features"}
    assert "| resnet18-adversarial | reg-free |" in (ws / "results" / "diagnostics" / "clustering.md").read_text()
    features = ws / "results" / "features"
    for name in ("nonrobust", "saliency", "repdistance"):
        assert (features / "tables" / f"features_{name}.md").is_file(), name
    assert (features / "saliency.png").is_file() and (features / "counterfactual.png").is_file()
    study = yaml.safe_load((ws / "results" / "survey" / "study.json").read_text())
    assert study["main_trials"] > 0 and (ws / "results" / "survey" / "public" / "index.html").is_file()


def test_every_job_is_an_mlflow_run_under_its_invocation(workspace):
    ws, _, _ = workspace
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["nanda2023-smoke"], output_format="list")
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("stage") == "pipeline"}
    jobs = [r for r in runs if r.data.tags.get("stage") != "pipeline"]
    assert {r.data.tags["stage"] for r in jobs} == {"train", "evaluate", "invert", "score", "features"}
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    for r in jobs:
        assert r.data.tags.get("mlflow.parentRunId") in parents, r.info.run_name
        for tag in ("profile", "git_commit", "params_hash", "arch", "regime", "dataset"):
            assert r.data.tags.get(tag), (r.info.run_name, tag)
    report_parent = next(p for p in parents.values()
                         if any(a.path == "tables" for a in mlflow.MlflowClient().list_artifacts(p.info.run_id)))
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(report_parent.info.run_id, "tables")}
    assert "tables/significance.md" in names


def test_dvc_reruns_only_what_a_scoring_change_and_one_regimes_change_touch(workspace):
    """One `dvc repro` after two edits: a scoring setting (rescores every set, trains and inverts
    nothing for it) and the AT regime's radius (retrains that regime's model and redoes its IRI sets,
    nothing of the other regimes)."""
    ws, env, _ = workspace
    models, iris = _mtimes(ws, "results/models/*/model.pt"), _mtimes(ws, "results/iris/*/*/meta.json")
    scores = _mtimes(ws, "results/scores/*/*.json")
    _set(ws / "params.yaml", "profiles.smoke.scoring.bootstrap", 77)
    _set(ws / "params.yaml", "profiles.smoke.training.regime.adversarial.attack.eps", 0.75)
    _run([str(BIN / "dvc"), "repro"], ws, env)
    after_models, after_iris = _mtimes(ws, "results/models/*/model.pt"), _mtimes(ws, "results/iris/*/*/meta.json")
    assert {k for k in models if after_models[k] != models[k]} == {"results/models/resnet18-adversarial/model.pt"}
    changed_iris = {k for k in iris if after_iris[k] != iris[k]}
    assert changed_iris and all(k.startswith("results/iris/resnet18-adversarial/") for k in changed_iris)
    after = _mtimes(ws, "results/scores/*/*.json")
    assert after.keys() == scores.keys() and all(after[k] != scores[k] for k in scores)  # every set rescored


def test_a_model_below_its_floor_fails_the_run_naming_it(workspace):
    ws, env, _ = workspace
    snakemake = [str(BIN / "snakemake"), "--cores", "all"]
    _set(ws / "params.yaml", "profiles.smoke.evaluation.floor.robust.clean", 100)  # no smoke AT model reaches 100%
    proc = subprocess.run(snakemake, cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "resnet18-adversarial (clean" in proc.stdout + proc.stderr and "< 100%" in proc.stdout + proc.stderr
    tables = ws / "results" / "tables"
    validity = yaml.safe_load((tables / "validity.json").read_text())
    assert list(validity["failed"]) == ["resnet18-adversarial"]
    assert "✗" in (tables / "alignment_by_regularizer.md").read_text()
    assert "resnet18-adversarial: below its accuracy floor" in (tables / "significance.md").read_text()
    evaluation = yaml.safe_load((ws / "results" / "evaluation" / "resnet18-adversarial.json").read_text())
    assert evaluation["validity"]["passed"] is False
    # accepting the failure is a decision the params record
    _set(ws / "params.yaml", "profiles.smoke.report.allow_failed", True)
    _run(snakemake, ws, env)
    _set(ws / "params.yaml", "profiles.smoke.evaluation.floor.robust.clean", 0)
    _set(ws / "params.yaml", "profiles.smoke.report.allow_failed", False)


def test_new_replicates_and_an_external_model_run_only_their_own_jobs(workspace):
    """Raising study.replicates to 2 trains, inverts and scores only replicate 1; a smoke-trained
    checkpoint declared in models.external (source factory) is inspected, evaluated, inverted, scored
    and reported with no training job. One DAG run for both: neither touches an existing model or set."""
    import hashlib

    ws, env, _ = workspace
    models, iris = _mtimes(ws, "results/models/*/model.pt"), _mtimes(ws, "results/iris/*/*/meta.json")
    weights = ws / "weights" / "mine.pt"
    weights.parent.mkdir()
    shutil.copy(ws / "results" / "models" / "resnet18-standard" / "model.pt", weights)
    entry = {"id": "resnet18-mine", "source": "factory", "arch": "resnet18", "factory": "iri_alignment.models:build_model",
             "factory_kwargs": {"dataset": "shapes", "arch": "resnet18", "width": 0.0625},
             "weights": {"file": "weights/mine.pt", "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()},
             "fake_relu": False, "training": {"regime": "standard"}}
    _set(ws / "params.yaml", "profiles.smoke.study.replicates", 2)
    _set(ws / "params.yaml", "profiles.smoke.inversion.replicates", {"human-aligned": 1, "adversarial": 1})
    _set(ws / "params.yaml", "profiles.smoke.models.external", [entry])
    _run([str(BIN / "snakemake"), "--cores", "all"], ws, env)
    after_models, after_iris = _mtimes(ws, "results/models/*/model.pt"), _mtimes(ws, "results/iris/*/*/meta.json")
    assert {k: after_models[k] for k in models} == models and {k: after_iris[k] for k in iris} == iris
    assert set(after_models) - set(models) == {f"results/models/resnet18-{g}-r1/model.pt"
                                               for g in ("standard", "adversarial", "simclr")}
    new_sets = set(after_iris) - set(iris)
    external_sets = {f"results/iris/resnet18-mine/{r}/meta.json" for r in ("reg-free", "human-aligned", "adversarial")}
    assert external_sets <= new_sets
    assert all("-r1" in k and "/reg-free/" in k for k in new_sets - external_sets) and new_sets - external_sets
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["nanda2023-smoke"], output_format="list")
    tagged = {(r.data.tags.get("stage"), r.data.tags.get("replicate")) for r in runs}
    assert {("train", "1"), ("evaluate", "1"), ("invert", "1"), ("score", "1"), ("train", "0")} <= tagged
    results = ws / "results"
    summary = (results / "tables" / "summary.md").read_text()
    assert "2 runs" not in summary and "pooled" in summary  # directions pooled over the two replicates
    # the external model, like a trained one
    descriptor = yaml.safe_load((results / "models" / "resnet18-mine" / "external.json").read_text())
    assert descriptor["inspection"]["layer"] == "backbone.fc" and descriptor["inspection"]["checks"]["deterministic"]
    evaluation = yaml.safe_load((results / "evaluation" / "resnet18-mine.json").read_text())
    trained = yaml.safe_load((results / "evaluation" / "resnet18-standard.json").read_text())
    assert evaluation["external"] and evaluation["clean_acc"] == trained["clean_acc"]  # the same weights
    validity = yaml.safe_load((results / "tables" / "validity.json").read_text())
    assert "resnet18-mine" in {m["model"] for m in validity["models"]}
    assert "external resnet18-mine" in (results / "tables" / "alignment_by_regularizer.md").read_text()
