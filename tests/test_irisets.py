"""Reading an IRI set from disk: a broken or incomplete folder is a named, one-line error
that names the file and says how to regenerate the set, never a traceback."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from iri_alignment.cli import cli
from iri_alignment.irisets import IRISetError, IRISetMissingFileError, read_iriset, write_iriset

N = 4


@pytest.fixture
def iriset(tmp_path):
    """A small complete IRI set written by :func:`write_iriset` (random images, no model)."""
    g = torch.Generator().manual_seed(0)
    targets, iris = torch.rand(N, 3, 32, 32, generator=g), torch.rand(N, 3, 32, 32, generator=g)
    seed = torch.rand(1, 3, 32, 32, generator=g)
    rep_loss = np.linspace(0.01, 0.2, N)
    table = pd.DataFrame({"index": np.arange(N), "target_index": np.arange(10, 10 + N), "label": np.arange(N),
                          "rep_loss": rep_loss, "converged": rep_loss <= 0.1, "best_iteration": np.full(N, 3),
                          "seed": np.zeros(N, dtype=np.int64)})
    meta = {"regularizer": "reg-free", "hash": "h", "model": {"dataset": "shapes", "arch": "resnet18", "regime": "standard"}}
    folder = tmp_path / "iris"
    write_iriset(folder, seeds=seed, targets=targets, iris=iris, table=table, target_indices=table["target_index"], meta=meta)
    return folder


def test_a_complete_set_reads(iriset):
    s = read_iriset(iriset)
    assert s.iris.shape == s.targets.shape == s.seed.shape == (N, 3, 32, 32)
    assert s.labels.tolist() == list(range(N)) and s.meta["regularizer"] == "reg-free"


def _says_regenerate(err: Exception) -> None:
    message = str(err)
    assert "delete the folder" in message and "iri invert" in message, message


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "text"])
def test_a_corrupt_png_names_the_file_and_says_to_regenerate(iriset, damage):
    png = iriset / "iris" / "0002.png"
    data = png.read_bytes()
    png.write_bytes({"garbage": b"\x00\x01not a png" * 20, "truncated": data[: len(data) // 2], "empty": b"",
                     "text": b"<html>oops</html>"}[damage])
    with pytest.raises(IRISetError) as err:
        read_iriset(iriset)
    assert isinstance(err.value, ValueError)
    assert str(png) in str(err.value)
    _says_regenerate(err.value)


def test_a_corrupt_seed_png_names_the_file(iriset):
    (iriset / "seed.png").write_bytes(b"broken")
    with pytest.raises(IRISetError, match="seed.png is not a readable image"):
        read_iriset(iriset)


def test_a_png_of_another_size_names_the_file(iriset):
    from PIL import Image

    Image.new("RGB", (16, 16)).save(iriset / "targets" / "0001.png")
    with pytest.raises(IRISetError, match=r"0001.png is 16x16 px.*targets/0000.png is 32x32") as err:
        read_iriset(iriset)
    _says_regenerate(err.value)


@pytest.mark.parametrize("name", ["iris/0003.png", "targets/0000.png", "seed.png", "results.csv"])
def test_a_missing_file_is_named(iriset, name):
    (iriset / name).unlink()
    with pytest.raises(IRISetMissingFileError) as err:
        read_iriset(iriset)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    assert str(iriset / name) in str(err.value)
    _says_regenerate(err.value)


def test_a_missing_meta_json_is_named(iriset):
    (iriset / "meta.json").unlink()
    with pytest.raises(IRISetMissingFileError, match=r"not a complete IRI set \(no meta.json\).*iri invert"):
        read_iriset(iriset)
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        read_iriset(iriset.parent / "never-written")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_corrupt_meta_json_is_named(iriset, content):
    (iriset / "meta.json").write_text(content)
    with pytest.raises(IRISetError, match="meta.json") as err:
        read_iriset(iriset)
    _says_regenerate(err.value)


@pytest.mark.parametrize("damage", ["empty", "no-label", "no-rows", "bad-seed"])
def test_a_broken_results_csv_is_named(iriset, damage):
    path = iriset / "results.csv"
    table = pd.read_csv(path)
    if damage == "empty":
        path.write_text("")
    elif damage == "no-label":
        table.drop(columns=["label"]).to_csv(path, index=False)
    elif damage == "no-rows":
        table.iloc[:0].to_csv(path, index=False)
    else:
        table.assign(seed=["0", "x", "0", "0"]).to_csv(path, index=False)
    with pytest.raises(IRISetError, match="results.csv") as err:
        read_iriset(iriset)
    _says_regenerate(err.value)
    if damage == "no-label":
        assert "label" in str(err.value)


def test_iri_score_on_a_corrupt_set_is_one_line_not_a_traceback(iriset, params_file, tmp_path):
    (iriset / "iris" / "0001.png").write_bytes(b"broken")
    result = CliRunner().invoke(cli, ["score", "--iris", str(iriset), "--out", str(tmp_path / "scores.csv"),
                                      "--params", str(params_file), "--profile", "smoke", "--proxy", "l2"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "0001.png is not a readable image" in lines[0], lines
    assert not (tmp_path / "scores.csv").exists()
    json.loads((iriset / "meta.json").read_text())  # the set itself is left as it was
