"""The `iri` command line, through click's runner and once as a real process."""

import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from iri_alignment.cli import cli


@pytest.fixture
def run():
    runner = CliRunner()

    def _run(*args):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return _run


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "iri_alignment.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("params", "data", "models"):
        assert command in out


def test_console_script_is_installed(repo):
    exe = repo / ".venv" / "bin" / "iri"
    if not exe.exists():
        pytest.skip("not running from the project's .venv")
    assert subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True).stdout.startswith("iri")


def test_params_check_valid(run, params_file):
    res = run("params", "check", str(params_file))
    assert res.exit_code == 0 and "valid (paper, embedded, imagenet, smoke)" in res.output


def test_params_check_invalid_exits_nonzero_naming_the_key(run, params_file):
    raw = yaml.safe_load(params_file.read_text())
    raw["training"]["regime"]["adversarial"]["attack"]["eps"] = -1
    params_file.write_text(yaml.safe_dump(raw))
    res = run("params", "check", str(params_file), "--profile", "paper")
    assert res.exit_code != 0
    assert "training.regime.adversarial.attack.eps = -1" in res.output and "must be > 0" in res.output


def test_params_show_merges_the_profile(run, repo):
    res = run("params", "show", "--params", str(repo / "params.yaml"), "--profile", "embedded", "--key", "data.dataset")
    assert json.loads(res.output) == "shapes"


def test_data_prepare_shapes(run, repo, tmp_path):
    res = run("data", "prepare", "--dataset", "shapes", "--root", str(tmp_path), "--params", str(repo / "params.yaml"),
              "--profile", "smoke")
    summary = json.loads(res.output)
    assert (summary["train"], summary["test"]) == (200, 100)


def test_data_prepare_missing_imagenet_is_a_clear_error(run, repo, tmp_path):
    res = CliRunner().invoke(cli, ["data", "prepare", "--dataset", "imagenet", "--root", str(tmp_path / "none"),
                                   "--params", str(repo / "params.yaml")])
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output


def test_models_describe(run):
    res = run("models", "describe", "--dataset", "cifar10", "--arch", "densenet121")
    info = json.loads(res.output)
    assert info["rep_dim"] == 1024 and info["num_params"] > 1_000_000


def test_models_describe_unknown_arch_is_a_clear_error():
    res = CliRunner().invoke(cli, ["models", "describe", "--dataset", "imagenet", "--arch", "densenet121"])
    assert res.exit_code == 1 and "densenet121" in res.output and "resnet50" in res.output


def test_a_thread_count_below_one_is_refused_by_name(repo):
    res = CliRunner().invoke(cli, ["--threads", "0", "params", "show", "--params", str(repo / "params.yaml")])
    assert res.exit_code == 2 and "--threads" in res.output and "0 is not in the range x>=1" in res.output


def test_validity_of_a_run_that_evaluated_no_model_fails(repo, tmp_path):
    """A validity.json over zero models is no pass: nothing was judged against its floor."""
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "validity.json").write_text(json.dumps({"floors": {}, "failed": {}, "models": [], "sets": []}))
    res = CliRunner().invoke(cli, ["validity", "--results", str(tmp_path), "--params", str(repo / "params.yaml"),
                                   "--profile", "smoke"])
    assert res.exit_code == 1 and "lists no model: nothing was evaluated" in res.output
