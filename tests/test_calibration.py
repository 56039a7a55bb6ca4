"""`iri calibrate`: each (model, seed, threads) is one real training process, checked against its targets."""

import json

from click.testing import CliRunner

from iri_alignment.calibration import calibration_runs
from iri_alignment.cli import cli
from iri_alignment.params import load_params


def test_runs_cover_every_model_seed_and_thread_count(repo):
    params = load_params(repo / "params.yaml", "embedded")
    runs = calibration_runs(params)
    assert len(runs) == 5 * 3 * 2  # 4 supervised + SimCLR, seeds 0-2, 1 and 2 threads
    assert {(r.seed, r.threads) for r in runs} == {(s, t) for s in (0, 1, 2) for t in (1, 2)}
    assert runs[0].regime in ("adversarial", "simclr")  # the longest training starts first


def test_calibrate_checks_targets_exits_nonzero_and_resumes(params_file, tmp_path):
    out = tmp_path / "calibration"
    common = ["--set", f"data.root={tmp_path / 'data'}", "--set", "calibration.targets.standard.robust_max=100"]
    args = ["calibrate", "--params", str(params_file), "--profile", "smoke", "--model", "resnet18-standard",
            "--out", str(out)]
    ok = CliRunner().invoke(cli, [*common, "--set", "calibration.targets.standard.clean=0", *args])
    assert ok.exit_code == 0, ok.output
    assert "resnet18-standard" in ok.output and "worst margin" in ok.output
    report = json.loads((out / "calibration.json").read_text())
    assert report["passed"] and len(report["runs"]) == 1 and report["machine"]["cpu"]
    run = report["runs"][0]
    assert (run["seed"], run["threads"]) == (0, 1) and 0 <= run["clean"] <= 100
    log = out / "resnet18-standard" / "seed-0-threads-1" / "train.log"
    trained_at = log.stat().st_mtime_ns
    # a target the model misses: exit 1 naming the run; the finished run is reused, not retrained
    strict = CliRunner().invoke(cli, [*common, "--set", "calibration.targets.standard.clean=100", *args])
    assert strict.exit_code == 1
    assert "resnet18-standard seed 0 threads 1: clean" in strict.output and "< 100%" in strict.output
    assert log.stat().st_mtime_ns == trained_at
    assert not json.loads((out / "calibration.json").read_text())["passed"]


def test_a_failed_run_stops_the_calibration(repo, monkeypatch, tmp_path):
    import pytest

    from iri_alignment import calibration

    params = load_params(repo / "params.yaml", "smoke")
    params["data"]["root"] = str(tmp_path / "data")
    started = []

    def fail(run, *args, **kwargs):
        started.append(run)
        raise RuntimeError("training failed")

    monkeypatch.setattr(calibration, "train_one", fail)
    monkeypatch.setattr(calibration.os, "cpu_count", lambda: 1)  # one run at a time
    with pytest.raises(RuntimeError, match="training failed"):
        calibration.calibrate(params, params_file=str(repo / "params.yaml"), out=tmp_path / "out", seeds=[0, 1],
                              threads=[1])
    assert len(started) == 1  # the queued runs were cancelled, not started
