"""The clustering diagnostics on hand-built IRI sets whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from iri_alignment import diagnostics
from iri_alignment.alignment import score
from iri_alignment.cli import cli
from iri_alignment.irisets import write_iriset

N = 6  # one target per class: every other target is a candidate


def _targets() -> torch.Tensor:
    """A bright square of its own colour and place on a dark ground, one per target."""
    x = torch.full((N, 3, 32, 32), 0.1)
    colours = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.2, 0.9], [0.9, 0.9, 0.2], [0.2, 0.9, 0.9],
                            [0.9, 0.2, 0.9]])
    for i in range(N):
        r, c = 2 + 4 * (i % 3), 2 + 12 * (i // 3)
        x[i, :, r:r + 12, c:c + 12] = colours[i][:, None, None]
    return x


def _write(folder, iris: torch.Tensor, seed: torch.Tensor, targets: torch.Tensor):
    table = pd.DataFrame({"index": np.arange(N), "target_index": np.arange(N), "label": np.arange(N),
                          "rep_loss": np.full(N, 0.01), "converged": np.ones(N, bool), "best_iteration": np.full(N, 3),
                          "seed": np.zeros(N, dtype=np.int64)})
    meta = {"regularizer": "reg-free", "hash": "h", "model": {"dataset": "shapes", "arch": "resnet18", "regime": "standard"}}
    write_iriset(folder, seeds=seed, targets=targets, iris=iris, table=table, target_indices=table["target_index"], meta=meta)


def test_inverted_contrast_is_seen_by_edges_and_polarity_not_by_the_mean_colour():
    targets = _targets()
    iris = 1.0 - targets  # the outline in inverted contrast: dark square on a bright ground
    triplets = np.array([[i, (i + 1) % N, (i + 2) % N] for i in range(N)])
    edges = diagnostics.edge_distances(iris, targets, triplets)
    assert np.allclose(edges[:, 0], 0.0, atol=1e-5)  # |gradient| does not change with the polarity
    assert (edges[:, 1:] > 0.2).all()
    assert diagnostics.negative_polarity(iris, targets).all()
    assert not diagnostics.negative_polarity(targets, targets).any()
    colour = diagnostics.mean_colour_distances(iris, targets, triplets)
    assert (colour[:, 0] > 0.5).all()  # an inverted image is far from its target's colour


def test_the_blur_lets_edges_see_an_outline_under_per_pixel_noise():
    targets = _targets()
    noisy = ((1.0 - targets) + 0.8 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    triplets = np.array([[i, (i + 1) % N, (i + 2) % N] for i in range(N)])

    def own_nearest(blur: float) -> int:
        d = diagnostics.edge_distances(noisy, targets, triplets, blur)
        return int((d[:, 0] < d[:, 1:].min(1)).sum())

    assert own_nearest(1.0) == N  # blurred, every inverted outline is nearest its own target
    assert own_nearest(0.0) < N  # unblurred, the noise's own edges win some triplets
    assert diagnostics.negative_polarity(noisy, targets, 1.0).all()
    assert diagnostics.grey(targets, 0.0).shape == diagnostics.grey(targets, 1.0).shape == (N, 1, 32, 32)


def test_seed_query_is_the_clustering_of_an_iri_that_never_left_its_seed(tmp_path, smoke):
    targets = _targets()
    seed = targets[2:3].clone()  # the seed *is* target 2: it wins every triplet that holds target 2
    _write(tmp_path / "iris", seed.expand(N, -1, -1, -1).clone(), seed, targets)
    scored = score(smoke, iris=tmp_path / "iris", proxies=["l2"], out=tmp_path / "scores" / "resnet18-standard" / "reg-free.csv",
                   device="cpu")
    per_iri = diagnostics.diagnose(tmp_path, "l2")
    table = pd.read_csv(tmp_path / "scores" / "resnet18-standard" / "reg-free.csv")
    holds_2 = table.filter(regex=r"^candidate_\d+$").eq(2).any(axis=1).to_numpy()
    # the IRIs are the seed, so the proxy's clustering and the seed-as-query clustering agree row by row
    assert np.array_equal(per_iri["seed_query"].to_numpy(), per_iri["proxy"].to_numpy())
    assert per_iri.loc[per_iri["target_index"] == 2, "seed_query"].item() == 1.0
    assert (per_iri["seed_query"].to_numpy()[holds_2 & (per_iri["target_index"] != 2).to_numpy()] == 0.0).all()
    assert per_iri["proxy"].mean() * 100 == pytest.approx(scored["proxies"]["l2"]["clustering"]["mean"])
    assert set(per_iri["model"]) == {"resnet18-standard"} and set(per_iri["replicate"]) == {0}


def test_pooled_averages_replicates_per_target_first():
    per_iri = pd.DataFrame({"model": "m", "regularizer": "reg-free", "replicate": [0, 0, 1, 1],
                            "target_index": [0, 1, 0, 1], "proxy": [1.0, 0.0, 1.0, 1.0], "seed_query": 0.0,
                            "mean_colour": 0.5, "edges": 1.0, "negative_polarity": [1.0, 0.0, 0.0, 0.0]})
    row = diagnostics.pooled(per_iri, bootstrap=200).iloc[0]
    assert row["proxy"] == pytest.approx(75.0) and row["negative_polarity"] == pytest.approx(25.0)
    assert row["replicates"] == 2 and row["targets"] == 2
    assert row["proxy_low"] <= 75.0 <= row["proxy_high"]


def test_the_command_writes_the_tables_and_names_a_missing_proxy(tmp_path, smoke, params_file):
    targets = _targets()
    _write(tmp_path / "iris", 1.0 - targets, torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), targets)
    score(smoke, iris=tmp_path / "iris", proxies=["l2"], out=tmp_path / "scores" / "resnet18-standard" / "reg-free.csv",
          device="cpu")
    runner = CliRunner()
    result = runner.invoke(cli, ["diagnose", "--results", str(tmp_path), "--params", str(params_file), "--profile", "smoke",
                                 "--proxy", "l2"])
    assert result.exit_code == 0, result.output
    assert "| resnet18-standard | reg-free | 1 x 6 |" in result.output
    for suffix in ("md", "json", "csv"):
        assert (tmp_path / "diagnostics" / f"clustering.{suffix}").is_file()
    assert pd.read_csv(tmp_path / "diagnostics" / "clustering.csv")["edges"].mean() == 1.0
    result = runner.invoke(cli, ["diagnose", "--results", str(tmp_path), "--params", str(params_file), "--profile", "smoke",
                                 "--proxy", "ssim"])
    assert result.exit_code != 0 and "no rows for proxy 'ssim'" in result.output
