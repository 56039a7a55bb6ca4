import pytest
import torch

from iri_alignment.checkpoints import CheckpointError, load_checkpoint, load_model, save_checkpoint
from iri_alignment.models import build_model

META = {"dataset": "shapes", "arch": "resnet18", "width": 0.125, "regime": "standard", "epoch": 3,
        "params_hash": "abc123", "metrics": {"clean_acc": 0.5}}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("shapes", "resnet18", width=0.125)


def test_roundtrip_keeps_weights_meta_and_state(tmp_path, model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "m.pt", model, META, state={"optimizer": opt.state_dict(), "rng": torch.get_rng_state()})
    ckpt = load_checkpoint(path)
    assert ckpt.meta["epoch"] == 3 and ckpt.meta["metrics"] == {"clean_acc": 0.5}
    assert ckpt.meta["git_commit"]  # filled in
    assert set(ckpt.state) == {"optimizer", "rng"}
    loaded, _ = load_model(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not loaded.training


def test_missing_meta_is_refused_on_save(tmp_path, model):
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(tmp_path / "m.pt", model, {"arch": "resnet18"})


def test_interrupted_save_leaves_previous_file(tmp_path, model, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", model, META)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, {**META, "epoch": 4})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind


def test_truncated_checkpoint(tmp_path, model):
    path = save_checkpoint(tmp_path / "m.pt", model, META)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_empty_checkpoint(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "m.pt")


def test_corrupt_checkpoint(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "m.pt")


class Arbitrary:
    """A class instance: loading it would mean running code from the file."""


def test_unsafe_pickle_is_not_loaded(tmp_path):
    torch.save({"format": "iri-alignment/checkpoint", "obj": Arbitrary()}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "m.pt")


def test_foreign_state_dict_is_not_a_checkpoint(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="not an iri-alignment checkpoint"):
        load_checkpoint(tmp_path / "m.pt")


def test_expectation_mismatch_names_the_field(tmp_path, model):
    path = save_checkpoint(tmp_path / "m.pt", model, META)
    with pytest.raises(CheckpointError, match="its arch is 'resnet18' but 'vgg16' was asked for"):
        load_checkpoint(path, expect={"arch": "vgg16"})


def test_weights_that_do_not_fit_the_named_arch(tmp_path, model):
    path = save_checkpoint(tmp_path / "m.pt", model, {**META, "width": 0.25})
    with pytest.raises(CheckpointError, match="does not fit the architecture.*shape mismatches"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
