"""Shared fixtures. Tests never touch the network or the repository's own
data/, results/ or mlflow.db: everything they write goes under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`make test` runs two workers) each worker gets one torch thread: two
# workers with two threads each on two cores spin against each other (see `iri --threads`).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def params_file(tmp_path, repo) -> Path:
    """A private copy of params.yaml that a test may edit."""
    dst = tmp_path / "params.yaml"
    dst.write_text((repo / "params.yaml").read_text())
    return dst


@pytest.fixture
def smoke(repo, tmp_path, monkeypatch) -> dict:
    """Smoke-profile params with data under tmp_path; the test runs from tmp_path."""
    from iri_alignment.params import load_params

    monkeypatch.chdir(tmp_path)
    params = load_params(repo / "params.yaml", "smoke")
    params["data"]["root"] = str(tmp_path / "data")
    return params


@pytest.fixture(autouse=True)
def isolated_tracking(tmp_path_factory, monkeypatch):
    """Every test logs to its own MLflow store, never the repository's."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.delenv("IRI_PARENT_RUN_ID", raising=False)
    return store


#: the longest files first, so that under pytest-xdist (`make test`) the smoke-DAG file starts at once on
#: one worker while the other works through the rest
LONG_FIRST = ("test_pipeline.py", "test_slurm.py", "test_survey.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: the rest keep their order
