"""The fork server: a job run through it is the job a new process runs (bitwise), with its streams,
exit status, signals and MLflow run; without a server `iri` runs in its own process."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from iri_alignment.checkpoints import load_checkpoint
from iri_alignment.forkserver import ENV, running_server

IRI = str(Path(sys.executable).parent / "iri")


@pytest.fixture(scope="module")
def server():
    with running_server() as path:
        yield path


@pytest.fixture
def study(repo, tmp_path, isolated_tracking):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    smoke = raw["profiles"]["smoke"]
    smoke["data"]["root"] = str(tmp_path / "data")
    smoke["data"]["shapes"]["n_train"] = 200
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != ENV}
    return tmp_path, env


def _statuses(store) -> list[str]:
    """The statuses of every run in ``store`` (asked of that store itself: another test of this
    process may have set MLflow's global tracking URI)."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return sorted(r.info.status for r in client.search_runs(ids))


def _train(out, *extra):
    return [IRI, "--threads", "1", "train", "--arch", "resnet18", "--regime", "adversarial", "--out", str(out),
            "--params", "params.yaml", "--profile", "smoke", "--no-progress", *extra]


def test_the_socket_is_its_owners_alone(server):
    assert stat.S_IMODE(os.stat(server).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(server)).st_mode) == 0o700


def test_a_job_through_the_server_is_bitwise_the_job_of_a_new_process(server, study, isolated_tracking):
    ws, env = study
    with open(ws / "direct.log", "w") as log:
        subprocess.run(_train(ws / "direct"), cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(ws / "forked.log", "w") as log:
        subprocess.run(_train(ws / "forked"), cwd=ws, env={**env, ENV: server}, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
    a, b = load_checkpoint(ws / "direct" / "model.pt"), load_checkpoint(ws / "forked" / "model.pt")
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    assert a.meta["metrics"] == b.meta["metrics"]
    # the child wrote its log lines into the client's redirected stream, at the client's log level
    assert "INFO" in (ws / "forked.log").read_text() and "epoch" in (ws / "forked.log").read_text()
    assert _statuses(isolated_tracking) == ["FINISHED", "FINISHED"]


def test_exit_status_and_errors_come_back(server, study):
    ws, env = study
    proc = subprocess.run([IRI, "params", "show", "--params", "params.yaml", "--key", "study.nope"], cwd=ws,
                          env={**env, ENV: server}, capture_output=True, text=True)
    assert proc.returncode == 1 and "nope" in proc.stderr


def test_sigterm_to_the_client_stops_its_job_and_marks_the_run_failed(server, study, isolated_tracking):
    ws, env = study
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["profiles"]["smoke"]["training"]["supervised"]["epochs"] = 50
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen(_train(ws / "long"), cwd=ws, env={**env, ENV: server},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (ws / "long" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    assert _statuses(isolated_tracking) == ["FAILED"]
    assert not (ws / "long" / "model.pt").exists()


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the child follows its server only on Linux")
def test_a_server_that_dies_takes_its_jobs_with_it_and_the_client_says_so(study):
    import socket
    import struct

    ws, env = study
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["profiles"]["smoke"]["training"]["supervised"]["epochs"] = 50
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    with running_server() as path:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(path)
            server_pid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               struct.calcsize("3i")))[0]
        proc = subprocess.Popen(_train(ws / "long"), cwd=ws, env={**env, ENV: path},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not (ws / "long" / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.1)
        os.kill(server_pid, signal.SIGKILL)
        assert proc.wait(60) == 1 and "stopped before the job ended" in proc.stderr.read()
        deadline = time.time() + 30
        while _processes_naming(path) and time.time() < deadline:  # the forked job carries the server's cmdline
            time.sleep(0.2)
        assert not _processes_naming(path)
    assert not (ws / "long" / "model.pt").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server follows its parent only on Linux")
def test_a_server_whose_starter_is_killed_stops_too(tmp_path):
    starter = ("import sys, time; from iri_alignment.forkserver import running_server\n"
               "with running_server() as path:\n    print(path, flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    assert _processes_naming(path)
    proc.kill()  # SIGKILL: no `finally` runs in the starter
    proc.wait()
    deadline = time.time() + 30
    while _processes_naming(path) and time.time() < deadline:
        time.sleep(0.2)
    assert not _processes_naming(path)


def test_without_a_server_iri_runs_in_its_own_process(study):
    ws, env = study
    proc = subprocess.run([IRI, "params", "show", "--params", "params.yaml", "--key", "study.seed"], cwd=ws,
                          env={**env, ENV: str(ws / "no-such-socket")}, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "0"


def test_inside_a_slurm_job_iri_never_forks_from_a_server(server, monkeypatch):
    from iri_alignment.forkserver import delegate

    monkeypatch.setenv(ENV, server)
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # the job must run in its own allocation
    assert delegate(["--version"]) is None


def test_workers_run_gives_the_commands_status_and_reuses_a_running_server(tmp_path):
    inner = f"import os, sys; open({str(tmp_path / 'inner')!r}, 'w').write(os.environ[{ENV!r}]); sys.exit(3)"
    outer = (f"import os, subprocess, sys; open({str(tmp_path / 'outer')!r}, 'w').write(os.environ[{ENV!r}]); "
             f"sys.exit(subprocess.call([{IRI!r}, 'workers', 'run', '--', sys.executable, '-c', {inner!r}]))")
    proc = subprocess.run([IRI, "workers", "run", "--", sys.executable, "-c", outer], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    socket_path = (tmp_path / "outer").read_text()
    assert (tmp_path / "inner").read_text() == socket_path  # the nested run used the outer server
    assert not os.path.exists(socket_path)  # stopped and removed afterwards
