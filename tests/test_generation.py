"""The invert / score / export-human jobs end to end on a tiny model: what the
folders hold, that scoring reads the 8-bit PNGs, resuming, MLflow records."""

import json
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from iri_alignment import generation
from iri_alignment.alignment import export_human, score
from iri_alignment.checkpoints import save_checkpoint
from iri_alignment.inversion import InversionResult, make_seed, representation_fn
from iri_alignment.irisets import grid_image, read_iriset, to_uint8
from iri_alignment.models import build_model
from iri_alignment.proxies import get_proxy, paired
from iri_alignment.scoring import clustering_triplets

CPU = torch.device("cpu")


@pytest.fixture
def study(smoke, tmp_path):
    params = smoke
    params["inversion"]["iterations"] = 4
    params["inversion"]["iterations_by_regularizer"] = {"reg-free": 3}
    params["inversion"]["batch_size"] = 6  # 10 targets: two batches
    params["inversion"]["restarts"] = {}  # the protocol's single seed (the restart tests set their own)
    torch.manual_seed(0)
    model = build_model("shapes", "resnet18", width=0.0625)
    ckpt = save_checkpoint(tmp_path / "model.pt", model, {"dataset": "shapes", "arch": "resnet18", "width": 0.0625,
                                                           "regime": "standard", "epoch": 1, "params_hash": "x", "eps": 1.0,
                                                           "metrics": {}})
    return params, ckpt


def test_invert_writes_a_complete_iri_set(study, tmp_path):
    params, ckpt = study
    summary = generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "iris", device=CPU,
                                  progress=False)
    out = tmp_path / "iris"
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 10 and sorted(table["label"]) == list(range(10))  # one target per class
    assert set(table.columns) >= {"target_index", "label", "rep_loss", "converged", "best_iteration"}
    assert (table["converged"] == (table["rep_loss"] <= params["inversion"]["converged_below"])).all()
    assert summary["pct_converged"] == pytest.approx(100 * table["converged"].mean())
    for sub in ("targets", "iris"):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{k:04d}.png" for k in range(10)]
    assert (out / "seed.png").is_file() and (out / "grid.png").is_file() and not (out / ".partial").exists()
    tensors = torch.load(out / "tensors.pt", weights_only=True)
    assert tensors["iris"].shape == (10, 3, 32, 32) and tensors["iris"].dtype == torch.float32
    assert json.loads((out / "targets.json").read_text()) == table["target_index"].tolist()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["regularizer"] == "reg-free" and meta["iterations"] == 3  # the per-regularizer override
    # the PNGs are the float tensors rounded to 8 bits
    iriset = read_iriset(out)
    assert torch.allclose(iriset.iris, tensors["iris"], atol=0.5 / 255 + 1e-6)
    # and it is an MLflow run with the grid attached
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = mlflow.search_runs(experiment_names=["nanda2023-smoke"], output_format="list")
    assert run.data.metrics["pct_converged"] == summary["pct_converged"]
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)} >= {"grid.png", "results.csv"}


def test_same_settings_same_iris(study, tmp_path):
    params, ckpt = study
    for name in ("a", "b"):
        generation.generate(params, checkpoint=ckpt, regularizer="human-aligned", out=tmp_path / name, device=CPU,
                            progress=False)
    assert (tmp_path / "a" / "iris" / "0003.png").read_bytes() == (tmp_path / "b" / "iris" / "0003.png").read_bytes()


def test_interrupted_inversion_resumes_without_redoing_finished_batches(study, tmp_path, monkeypatch):
    params, ckpt = study
    calls = []
    real = generation.invert

    def flaky(*args, **kwargs):
        calls.append(args[1].shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second batch
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "invert", flaky)
    with pytest.raises(KeyboardInterrupt):
        generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "iris", device=CPU, progress=False)
    assert (tmp_path / "iris" / ".partial" / "batch-000.pt").is_file() and not (tmp_path / "iris" / "meta.json").exists()
    generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "iris", device=CPU, progress=False)
    assert calls == [6, 4, 4]  # batch 0 once, batch 1 twice
    monkeypatch.setattr(generation, "invert", real)
    generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "straight", device=CPU, progress=False)
    assert (tmp_path / "iris" / "iris" / "0007.png").read_bytes() == (tmp_path / "straight" / "iris" / "0007.png").read_bytes()


def _same_iri_sets(a, b):
    """Assert two IRI set folders hold the same files, bitwise: every PNG, results.csv,
    meta.json, targets.json, and the exact float tensors."""
    files = lambda root: sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert files(a) == files(b)
    for rel in files(a):
        if rel.suffix == ".pt":
            ta, tb = (torch.load(root / rel, weights_only=True) for root in (a, b))
            assert ta.keys() == tb.keys()
            assert all(torch.equal(ta[k], tb[k]) for k in ta), rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.mark.parametrize("regularizer", ["reg-free", "human-aligned"])
def test_inversion_interrupted_mid_batch_resumes_from_its_snapshot_bitwise(study, tmp_path, monkeypatch, regularizer):
    """Stopped right after the running batch's ``.running.pt`` snapshot, the job resumes
    from that snapshot (not from the seed) and writes the uninterrupted run's IRI set."""
    params, ckpt = study
    params["inversion"]["iterations_by_regularizer"] = {regularizer: 6}
    real = generation.invert
    calls = []  # (batch size, iteration it started from)

    def stopping(*args, on_checkpoint, state=None, **kwargs):
        calls.append((args[1].shape[0], state["iteration"] if state else 0))

        def snapshot(snap):
            on_checkpoint(snap)
            if len(calls) == 2 and snap["iteration"] == 4:  # batch 1, 4 of its 6 steps done
                raise KeyboardInterrupt
        return real(*args, on_checkpoint=snapshot, state=state, **kwargs)

    monkeypatch.setattr(generation, "invert", stopping)
    kw = {"checkpoint": ckpt, "regularizer": regularizer, "device": CPU, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        generation.generate(params, out=tmp_path / "stopped", checkpoint_every=2, **kw)
    partial = tmp_path / "stopped" / ".partial"
    assert sorted(p.name for p in partial.iterdir()) == ["batch-000.pt", "batch-001.running.pt"]
    assert torch.load(partial / "batch-001.running.pt", weights_only=True)["iteration"] == 4

    generation.generate(params, out=tmp_path / "stopped", checkpoint_every=2, **kw)
    assert calls == [(6, 0), (4, 0), (4, 4)]  # batch 0 once; batch 1 resumed at its snapshot
    assert not partial.exists()

    monkeypatch.setattr(generation, "invert", real)
    generation.generate(params, out=tmp_path / "straight", **kw)  # default interval: no snapshot at all
    _same_iri_sets(tmp_path / "straight", tmp_path / "stopped")


# -- the inversion's own null (protocol 9) ------------------------------------------------------


def test_inversion_null_by_hand():
    distances = torch.tensor([[0.1, 0.3, 0.5],
                              [0.2, 0.4, 0.1],
                              [0.6, 0.6, 0.6]])
    null = generation.inversion_null(distances, distances.diagonal().numpy())
    np.testing.assert_allclose(null["rep_other_min"], [0.3, 0.1, 0.6])
    np.testing.assert_allclose(null["rep_other_median"], [0.4, 0.15, 0.6])
    assert null["rep_specific"].tolist() == [True, False, False]  # a tie is not specific
    one = generation.inversion_null(torch.tensor([[0.0]]), np.zeros(1))
    assert np.isnan(one["rep_other_min"]).all() and one["rep_specific"].tolist() == [False]
    with pytest.raises(ValueError, match="needs an \\(N, N\\) distance matrix"):
        generation.inversion_null(torch.zeros(2, 3), np.zeros(2))


def _fake_invert(shift: int):
    """An ``invert`` whose IRI n is target n + shift's image (within the batch), with its true rep loss."""

    def fake(model, targets, seed_image, objective, **kwargs):
        images = targets.roll(-shift, dims=0).clone()
        model_rep = representation_fn(model)
        model.eval()
        with torch.no_grad():
            rep = objective.rep_loss(model_rep, images, model_rep(targets))
        zeros = torch.zeros(len(targets), dtype=torch.long)
        return InversionResult(images, rep, zeros, rep, [])

    return fake


def test_iris_that_are_their_targets_are_specific(study, tmp_path, monkeypatch):
    params, ckpt = study
    monkeypatch.setattr(generation, "invert", _fake_invert(0))
    summary = generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "iris", device=CPU,
                                  progress=False)
    table = read_iriset(tmp_path / "iris").table  # through the reader scoring uses
    assert (table["rep_loss"] == 0).all()
    assert (table["rep_other_min"] > 0).all() and (table["rep_other_median"] >= table["rep_other_min"]).all()
    assert table["rep_specific"].dtype == bool and table["rep_specific"].all()
    assert summary["pct_rep_specific"] == 100.0
    distances = torch.load(tmp_path / "iris" / "tensors.pt", weights_only=True)["rep_distances"]
    assert distances.shape == (10, 10) and (distances.diagonal() == 0).all()
    others = distances[~torch.eye(10, dtype=torch.bool)].view(10, 9)
    np.testing.assert_allclose(table["rep_other_min"], others.min(1).values.numpy(), rtol=1e-6)


def test_an_iri_that_is_another_targets_image_is_not_specific(study, tmp_path, monkeypatch):
    params, ckpt = study
    monkeypatch.setattr(generation, "invert", _fake_invert(1))  # IRI n is target n + 1's image
    summary = generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "iris", device=CPU,
                                  progress=False)
    table = read_iriset(tmp_path / "iris").table
    assert (table["rep_loss"] > 0.01).all()
    assert (table["rep_other_min"] < 1e-5).all()  # it is another target's representation
    assert not table["rep_specific"].any() and summary["pct_rep_specific"] == 0.0


def test_null_columns_are_measured_like_rep_loss_on_the_kept_iris(study, tmp_path):
    params, ckpt = study
    generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "iris", device=CPU, progress=False)
    table = pd.read_csv(tmp_path / "iris" / "results.csv")
    distances = torch.load(tmp_path / "iris" / "tensors.pt", weights_only=True)["rep_distances"]
    # the diagonal, recomputed on the float IRIs of tensors.pt, is the recorded rep loss
    np.testing.assert_allclose(distances.diagonal().numpy(), table["rep_loss"], rtol=1e-4, atol=1e-6)
    assert (table["rep_specific"] == (table["rep_loss"] < table["rep_other_min"])).all()
    assert set(table.columns) >= {"rep_other_min", "rep_other_median", "rep_specific"}


def test_a_set_written_before_the_null_columns_still_reads_and_scores(study, tmp_path):
    params, ckpt = study
    generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "iris", device=CPU, progress=False)
    path = tmp_path / "iris" / "results.csv"
    old = pd.read_csv(path).drop(columns=["rep_other_min", "rep_other_median", "rep_specific"])
    old.to_csv(path, index=False)
    assert len(read_iriset(tmp_path / "iris").table) == 10
    score(params, iris=tmp_path / "iris", proxies=["l2"], out=tmp_path / "scores.csv", device=CPU)
    assert len(pd.read_csv(tmp_path / "scores.csv")) == 10


def test_targets_are_seeded_and_balanced():
    labels = np.repeat(np.arange(10), 20)
    a = generation.select_targets(labels, 3, seed=0)
    assert len(a) == 30 and (np.bincount(labels[a]) == 3).all()
    assert (a == generation.select_targets(labels, 3, seed=0)).all()
    assert (a != generation.select_targets(labels, 3, seed=1)).any()
    with pytest.raises(ValueError, match="fewer than the 30 targets"):
        generation.select_targets(labels, 30, seed=0)


def test_score_reads_the_pngs_and_saves_every_distance(study, tmp_path):
    params, ckpt = study
    generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "iris", device=CPU, progress=False)
    summary = score(params, iris=tmp_path / "iris", proxies=["l2", "ssim"], out=tmp_path / "scores.csv", device=CPU)
    table = pd.read_csv(tmp_path / "scores.csv")
    assert len(table) == 20 and set(table["proxy"]) == {"l2", "ssim"}
    # distances are those of the 8-bit images, not of the float tensors
    iriset = read_iriset(tmp_path / "iris")
    d = paired(get_proxy("l2"), iriset.iris, iriset.targets).numpy()
    assert np.allclose(table.loc[table["proxy"] == "l2", "d_target"], d, atol=1e-6)
    rows = table[table["proxy"] == "l2"]
    expected = np.where(rows["d_target"] < rows["d_seed"], 1.0, 0.0)
    assert (rows["2afc"].to_numpy() == expected).all()  # no exact ties on random images
    assert summary["proxies"]["l2"]["2afc"]["mean"] == pytest.approx(100 * expected.mean())
    s = summary["proxies"]["ssim"]["clustering"]
    assert s["ci_low"] <= s["mean"] <= s["ci_high"] and s["n"] == 10
    assert summary["over_proxies"]["2afc"]["n"] == 2
    assert json.loads((tmp_path / "scores.json").read_text())["regularizer"] == "reg-free"


def test_adversarial_set_flags_the_proxy_it_was_optimised_against(study, tmp_path):
    params, ckpt = study
    params["inversion"]["adversarial"]["proxy"] = "ssim"
    generation.generate(params, checkpoint=ckpt, regularizer="adversarial", out=tmp_path / "iris", device=CPU, progress=False)
    summary = score(params, iris=tmp_path / "iris", proxies=["l2", "ssim"], out=tmp_path / "scores.csv", device=CPU)
    assert summary["proxies"]["ssim"]["optimised_against"] and not summary["proxies"]["l2"]["optimised_against"]
    assert summary["other_proxies"]["2afc"]["n"] == 1


def test_export_human_uses_the_scored_triplets(study, tmp_path):
    params, ckpt = study
    generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "iris", device=CPU, progress=False)
    export_human(params, iris=tmp_path / "iris", out=tmp_path / "human")
    manifest = json.loads((tmp_path / "human" / "manifest.json").read_text())
    labels = read_iriset(tmp_path / "iris").labels
    triplets = clustering_triplets(labels, params["scoring"]["clustering_seed"])
    for trial, row in zip(manifest["clustering"], triplets):
        assert trial["candidates"] == [f"images/target-{j:04d}.png" for j in row]
        assert trial["candidates"][trial["answer"]] == f"images/target-{trial['trial']:04d}.png"
    for trial in manifest["2afc"]:
        assert trial["choices"][trial["answer"]] == f"images/target-{trial['trial']:04d}.png"
        assert "images/seed.png" in trial["choices"]
        for path in (trial["query"], *trial["choices"]):
            assert (tmp_path / "human" / path).is_file()


def test_restarts_start_only_unconverged_iris_again_and_score_them_against_their_own_seed(study, tmp_path):
    params, ckpt = study
    generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "once", device=CPU, progress=False)
    once = pd.read_csv(tmp_path / "once" / "results.csv")
    assert (once["seed"] == 0).all()
    # with the threshold at the median, half the IRIs count as converged
    params["inversion"]["converged_below"] = float(once["rep_loss"].median())
    params["inversion"]["restarts"] = {"reg-free": 1}
    summary = generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "again", device=CPU,
                                  progress=False)
    again = pd.read_csv(tmp_path / "again" / "results.csv")
    restarted = (again["seed"] == 1).to_numpy()
    stuck = (once["rep_loss"] > params["inversion"]["converged_below"]).to_numpy()
    assert summary["restarted"] == restarted.sum() > 0
    assert not (restarted & ~stuck).any()  # converged IRIs keep the shared seed's result
    assert np.allclose(again["rep_loss"][~restarted], once["rep_loss"][~restarted])
    assert (again["rep_loss"][restarted] < once["rep_loss"][restarted]).all()  # the lower-loss attempt is kept
    assert json.loads((tmp_path / "again" / "meta.json").read_text())["restarts"] == 1

    iriset = read_iriset(tmp_path / "again")
    shared, new = (make_seed("noise", (3, 32, 32), params["study"]["seed"] + k)[0] for k in (0, 1))
    q = 0.5 / 255 + 1e-6
    assert all(torch.allclose(iriset.seed[k], new if restarted[k] else shared, atol=q) for k in range(len(again)))
    score(params, iris=tmp_path / "again", proxies=["l2"], out=tmp_path / "scores.csv", device=CPU)
    scored = pd.read_csv(tmp_path / "scores.csv")
    assert (scored["seed"].to_numpy() == again["seed"].to_numpy()).all()
    assert np.allclose(scored["d_seed"], paired(get_proxy("l2"), iriset.iris, iriset.seed).numpy(), atol=1e-6)

    export_human(params, iris=tmp_path / "again", out=tmp_path / "human")
    manifest = json.loads((tmp_path / "human" / "manifest.json").read_text())
    for trial in manifest["2afc"]:
        own = "images/seed-1.png" if restarted[trial["trial"]] else "images/seed.png"
        assert own in trial["choices"] and (tmp_path / "human" / own).is_file()


def test_grid_shows_the_shared_seed_once_per_row_and_a_restarted_iris_own_seed_below_it():
    g = torch.Generator().manual_seed(0)
    targets, iris, seed_a, seed_b = (torch.rand(n, 3, 4, 4, generator=g) for n in (3, 3, 1, 1))
    cell = lambda grid, r, c: grid[r * 8 + 2:r * 8 + 6, c * 8 + 2:c * 8 + 6]  # noqa: E731  (pad 2, scale 1)

    shared = grid_image(targets, iris, seed_a.expand(3, -1, -1, -1), columns=3, scale=1)
    assert shared.shape == (2 * 8, 4 * 8, 3)  # targets row, IRI row; the seed leads the IRI row
    assert (cell(shared, 1, 0) == to_uint8(seed_a)[0]).all() and (cell(shared, 0, 0) == 255).all()
    assert (cell(shared, 1, 3) == to_uint8(iris)[2]).all()

    own = torch.cat([seed_a, seed_b, seed_a])  # the middle IRI restarted from another seed
    mixed = grid_image(targets, iris, own, columns=3, scale=1)
    assert mixed.shape == (3 * 8, 3 * 8, 3)  # targets, IRIs, and each IRI's own seed below it
    assert all((cell(mixed, 2, k) == to_uint8(own)[k]).all() for k in range(3))
    assert (cell(mixed, 1, 1) == to_uint8(iris)[1]).all()


def test_restarts_are_skipped_for_a_seed_that_is_always_the_same(study, tmp_path):
    params, ckpt = study
    params["inversion"]["restarts"] = {"reg-free": 2}
    params["inversion"]["converged_below"] = 1e-9
    summary = generation.generate(params, checkpoint=ckpt, regularizer="reg-free", out=tmp_path / "iris", device=CPU,
                                  seed_type="white", progress=False)
    assert summary["restarted"] == 0 and not (tmp_path / "iris" / "seed-1.png").exists()
