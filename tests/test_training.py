"""Training regimes on the smoke profile: every regime runs, runs are tracked,
failures are marked, and an interrupted run (SIGKILL) resumes to the same weights."""

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch
import yaml

from iri_alignment import training
from iri_alignment.checkpoints import CheckpointError, load_checkpoint
from iri_alignment.params import load_params
from iri_alignment.training import REGIMES, train


def runs(params):
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=[f"{params['study']['name']}-{params['profile']}"], output_format="list")


@pytest.mark.parametrize("regime", REGIMES)
def test_every_regime_trains_and_evaluates(smoke, tmp_path, regime):
    metrics = train(smoke, arch="resnet18", regime=regime, out=tmp_path / regime, device=torch.device("cpu"), progress=False)
    # (robust may exceed clean for a near-chance model: PGD can flip a wrong answer to a right one)
    assert metrics["n"] == 100
    for key in ("clean_acc", "robust_acc"):  # fractions of exactly the n test images
        assert metrics[key] * metrics["n"] == pytest.approx(round(metrics[key] * metrics["n"]))
    if regime in training.CONTRASTIVE:
        # the fitted probe became the classifier's final layer: same test accuracy
        assert metrics["clean_acc"] == pytest.approx(metrics["probe_test_acc"])
        assert (tmp_path / regime / "epoch-0001.pt").is_file()  # keep_every: 1 in the smoke profile
    ckpt = load_checkpoint(tmp_path / regime / "model.pt")
    epochs = training.regime_config(smoke, regime)["epochs"]
    assert ckpt.meta["regime"] == regime and ckpt.meta["epoch"] == epochs and ckpt.meta["metrics"]["clean_acc"] == metrics["clean_acc"]
    written = json.loads((tmp_path / regime / "metrics.json").read_text())
    assert written["robust_acc"] == metrics["robust_acc"]


def test_training_is_an_mlflow_run_with_tags_and_epoch_metrics(smoke, tmp_path):
    train(smoke, arch="resnet18", regime="adversarial", out=tmp_path / "m", device=torch.device("cpu"), progress=False)
    (run,) = runs(smoke)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    for key in ("dataset", "arch", "regime", "profile", "git_commit", "params_hash"):
        assert tags[key], key
    assert (tags["dataset"], tags["arch"], tags["regime"], tags["profile"]) == ("shapes", "resnet18", "adversarial", "smoke")
    client = mlflow.MlflowClient()
    for metric in ("loss", "train_acc", "clean_acc", "robust_acc", "images_per_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1], metric
    assert "final_robust_acc" in run.data.metrics
    assert run.data.params["attack.eps"] == "1.0"


def test_a_failing_run_is_marked_failed(smoke, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(training, "train_supervised_epoch", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        train(smoke, arch="resnet18", regime="standard", out=tmp_path / "m", device=torch.device("cpu"), progress=False)
    (run,) = runs(smoke)
    assert run.info.status == "FAILED"


def test_resume_refuses_a_checkpoint_of_other_params(smoke, tmp_path):
    train(smoke, arch="resnet18", regime="standard", out=tmp_path / "m", device=torch.device("cpu"), progress=False)
    smoke["training"]["supervised"]["lr"] = 0.05
    with pytest.raises(CheckpointError, match="cannot resume.*params_hash.*--restart"):
        train(smoke, arch="resnet18", regime="standard", out=tmp_path / "m", device=torch.device("cpu"), progress=False)
    train(smoke, arch="resnet18", regime="standard", out=tmp_path / "m", device=torch.device("cpu"), progress=False,
          replace_stale=True)
    assert load_checkpoint(tmp_path / "m" / "model.pt").meta["params_hash"] == training.run_hash(smoke, "shapes", "resnet18", "standard")


def test_unknown_regime_is_named():
    with pytest.raises(ValueError, match="unknown regime 'adverserial'"):
        training.regime_config({"training": {}}, "adverserial")


# -- kill and resume -------------------------------------------------------------------------


def _train_cmd(tmp_path, out):
    return [sys.executable, "-m", "iri_alignment.cli", "train", "--arch", "resnet18", "--regime", "adversarial",
            "--out", str(out), "--params", str(tmp_path / "params.yaml"), "--profile", "smoke", "--no-progress"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_weights_as_an_uninterrupted_run(repo, tmp_path):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    smoke = raw["profiles"]["smoke"]
    smoke["data"]["root"] = str(tmp_path / "data")
    smoke["training"]["supervised"]["epochs"] = 4
    smoke["data"]["shapes"]["n_train"] = 400
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    subprocess.run(_train_cmd(tmp_path, tmp_path / "straight"), cwd=tmp_path, env=env, check=True, capture_output=True)

    proc = subprocess.Popen(_train_cmd(tmp_path, tmp_path / "killed"), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and load_checkpoint(last).meta["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; make the run longer"
    time.sleep(0.3)  # kill mid-epoch, not right at a checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch_at_kill = load_checkpoint(last).meta["epoch"]
    assert 2 <= epoch_at_kill < 4 and not (tmp_path / "killed" / "model.pt").exists()

    subprocess.run(_train_cmd(tmp_path, tmp_path / "killed"), cwd=tmp_path, env=env, check=True, capture_output=True)

    a = load_checkpoint(tmp_path / "straight" / "model.pt")
    b = load_checkpoint(tmp_path / "killed" / "model.pt")
    assert a.model.keys() == b.model.keys()
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    assert a.meta["metrics"] == b.meta["metrics"]


def test_attack_radius_warm_up_ramps_linearly_then_holds():
    cfg = {"attack": {"eps": 1.5, "steps": 1, "eps_warmup_epochs": 3}}
    assert [training.warmed_up(cfg, e)["attack"]["eps"] for e in (1, 2, 3, 4, 5)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 1.5])
    plain = {"attack": {"eps": 1.5, "steps": 1}}
    assert training.warmed_up(plain, 1) is plain


# -- each supervised regime trains with its own loss ------------------------------------------


@pytest.fixture
def batch_setup(repo):
    """Smoke params, a tiny untrained ResNet18 and one random batch (no data on disk)."""
    from iri_alignment.models import build_model

    params = load_params(repo / "params.yaml", "smoke")
    torch.manual_seed(0)
    model = build_model("shapes", "resnet18", width=0.0625).train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    return params, model, x, y


def _batch_loss(params, model, x, y, regime, settings_of=None):
    """The regime's loss on a fresh copy of ``model`` (train-mode BN updates stay in the copy)
    with the attack generator seeded alike for every regime; ``settings_of`` (default: the
    regime itself) names the regime whose settings (attack, beta) are used."""
    import copy

    cfg = training.regime_config(params, settings_of or regime)
    loss, logits = training.supervised_batch_loss(copy.deepcopy(model), x, y, cfg, regime, torch.Generator().manual_seed(0))
    assert logits.shape == (len(y), 10) and loss.dim() == 0 and torch.isfinite(loss)
    return loss.item()


def test_every_supervised_regime_trains_with_its_own_loss(batch_setup):
    params, model, x, y = batch_setup
    assert set(training.SUPERVISED_LOSSES) == set(training.SUPERVISED)
    loss = {regime: _batch_loss(params, model, x, y, regime) for regime in training.SUPERVISED}
    assert loss["standard"] == loss["standard-simclraug"]  # the same CE; only the augmentation differs
    assert loss["adversarial"] > loss["standard"] + 1e-4  # the PGD adversary raises the CE
    # the noaug variant is adversarial training without augmentation: the same loss function
    assert training.SUPERVISED_LOSSES["adversarial-noaug"] is training.SUPERVISED_LOSSES["adversarial"]
    assert _batch_loss(params, model, x, y, "adversarial-noaug", settings_of="adversarial") == loss["adversarial"]
    assert training.SUPERVISED_LOSSES["trades"] is not training.SUPERVISED_LOSSES["mart"]
    for regime in ("trades", "mart"):
        for other in ("standard", "adversarial"):
            assert abs(loss[regime] - loss[other]) > 1e-4, (regime, other, loss)
    assert abs(loss["trades"] - loss["mart"]) > 1e-4, loss


def test_at_radius_zero_adversarial_training_is_clean_training_without_an_attack(batch_setup, monkeypatch):
    params, model, x, y = batch_setup
    params["training"]["regime"]["adversarial"]["attack"]["eps_warmup_epochs"] = 2
    cfg = training.warmed_up(training.regime_config(params, "adversarial"), 1)  # epoch 1 of a warm-up: eps 0
    assert cfg["attack"]["eps"] == 0
    monkeypatch.setattr(training.attacks, "pgd_l2", lambda *a, **k: pytest.fail("attacked at eps 0"))
    import copy

    loss, _ = training.supervised_batch_loss(copy.deepcopy(model), x, y, cfg, "adversarial", torch.Generator())
    assert loss.item() == _batch_loss(params, model, x, y, "standard")


@pytest.mark.parametrize("regime", ["simclr", "adverserial", "none"])
def test_supervised_batch_loss_refuses_a_regime_it_does_not_name(batch_setup, regime):
    params, model, x, y = batch_setup
    cfg = training.regime_config(params, "adversarial")  # settings that PGD training would accept
    with pytest.raises(ValueError, match=f"no supervised loss for regime '{regime}'.*standard.*mart"):
        training.supervised_batch_loss(model, x, y, cfg, regime, torch.Generator().manual_seed(0))


# -- SimCLR: stopped after epoch 1 of 2, resumed -----------------------------------------------


def test_simclr_stopped_after_one_epoch_resumes_to_the_same_weights(smoke, tmp_path, monkeypatch):
    """Contrastive state (backbone, head, LARS momentum, warm-up/cosine schedule) survives
    ``last.pt``: a run stopped after epoch 1 of 2 and rerun ends with an uninterrupted run's weights."""
    assert training.regime_config(smoke, "simclr")["epochs"] == 2
    kw = {"arch": "resnet18", "regime": "simclr", "device": torch.device("cpu"), "progress": False, "evaluate": False}
    train(smoke, out=tmp_path / "straight", **kw)

    real = training.train_contrastive_epoch

    def stop_in_epoch_2(*args, epoch, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt  # stopped after epoch 1's last.pt was written
        return real(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(training, "train_contrastive_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(smoke, out=tmp_path / "stopped", **kw)
    assert load_checkpoint(tmp_path / "stopped" / "last.pt").meta["epoch"] == 1
    assert not (tmp_path / "stopped" / "model.pt").exists()

    epochs_run = []
    monkeypatch.setattr(training, "train_contrastive_epoch",
                        lambda *a, epoch, **k: epochs_run.append(epoch) or real(*a, epoch=epoch, **k))
    train(smoke, out=tmp_path / "stopped", **kw)
    assert epochs_run == [2]  # resumed, not started again

    for name in ("last.pt", "model.pt"):
        a, b = load_checkpoint(tmp_path / "straight" / name), load_checkpoint(tmp_path / "stopped" / name)
        assert a.model.keys() == b.model.keys()
        for key in a.model:
            assert torch.equal(a.model[key], b.model[key]), (name, key)
    a, b = (load_checkpoint(tmp_path / run / "last.pt").state for run in ("straight", "stopped"))
    for key, value in a["trainable"].items():  # the projection head too, not only the classifier
        assert torch.equal(value, b["trainable"][key]), key
    assert a["scheduler"] == b["scheduler"]
