"""Data sources on fixtures the tests build: a CIFAR archive in the official
on-disk format, an ImageNet-style folder, and the generated shapes dataset."""

import dataclasses
import hashlib
import io
import pickle
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from iri_alignment.data import DatasetError, load_arrays, prepare, sources
from iri_alignment.data.sources import check_imagenet, imagenet_folder
from iri_alignment.data.loading import FolderSplit


def _batch(rng, n, label_key, n_classes):
    data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    labels = rng.integers(0, n_classes, size=n).tolist()
    return {b"data": data, label_key: labels, b"batch_label": b"fixture"}


def make_cifar_archive(path, name="cifar10", n_per_file=8, drop=()):
    """Write a small archive with the official layout; return what it holds."""
    src = sources.CIFAR_SOURCES[name]
    rng = np.random.default_rng(0)
    n_classes = 10 if name == "cifar10" else 100
    content = {}
    with tarfile.open(path, "w:gz") as tar:
        for fname in (*src.train_files, *src.test_files):
            if fname in drop:
                continue
            batch = _batch(rng, n_per_file, src.label_key, n_classes)
            content[fname] = batch
            blob = pickle.dumps(batch)
            info = tarfile.TarInfo(f"{src.folder}/{fname}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return content


@pytest.fixture
def cifar_fixture(tmp_path, monkeypatch):
    """A fixture archive served from a file:// URL, with the registry pointed at it."""
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "cifar-10-python.tar.gz"
    content = make_cifar_archive(archive)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    src = dataclasses.replace(sources.CIFAR_SOURCES["cifar10"], url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(sources.CIFAR_SOURCES, "cifar10", src)
    return archive, content


def test_cifar_download_verify_extract_load(tmp_path, cifar_fixture):
    _, content = cifar_fixture
    root = tmp_path / "data"
    summary = prepare("cifar10", root)
    assert (summary["train"], summary["test"]) == (40, 8)
    assert (root / "cifar10" / "cifar-10-python.tar.gz").is_file()
    train = load_arrays("cifar10", "train", root)
    assert train.images.shape == (40, 32, 32, 3) and train.images.dtype == np.uint8
    # the official rows are channel-major (1024 red, 1024 green, 1024 blue values)
    first = content["data_batch_1"][b"data"][0]
    assert train.images[0, 0, 0].tolist() == [first[0], first[1024], first[2048]]
    assert train.images[0, 0, 1, 0] == first[1]
    assert train.labels[:8].tolist() == content["data_batch_1"][b"labels"]


def test_cifar_archive_placed_by_hand_needs_no_network(tmp_path, cifar_fixture):
    archive, _ = cifar_fixture
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    (folder / archive.name).write_bytes(archive.read_bytes())
    test = load_arrays("cifar10", "test", tmp_path / "data", download=False)
    assert len(test) == 8


def test_cifar_offline_error_says_which_file_goes_where(tmp_path, monkeypatch):
    src = dataclasses.replace(sources.CIFAR_SOURCES["cifar10"], url=(tmp_path / "nowhere.tar.gz").as_uri())
    monkeypatch.setitem(sources.CIFAR_SOURCES, "cifar10", src)
    with pytest.raises(DatasetError) as info:
        prepare("cifar10", tmp_path / "data")
    msg = str(info.value)
    assert "could not download cifar-10-python.tar.gz" in msg
    assert str((tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz").resolve()) in msg
    assert src.md5 in msg
    assert not (tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz").exists()


def test_cifar_checksum_mismatch_is_refused(tmp_path, cifar_fixture):
    archive, _ = cifar_fixture
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    (folder / archive.name).write_bytes(archive.read_bytes()[:-100])  # truncated copy
    with pytest.raises(DatasetError, match="md5 .* corrupt or incomplete"):
        prepare("cifar10", tmp_path / "data")


def test_cifar_download_with_wrong_checksum_is_not_kept(tmp_path, cifar_fixture, monkeypatch):
    src = dataclasses.replace(sources.CIFAR_SOURCES["cifar10"], md5="0" * 32)
    monkeypatch.setitem(sources.CIFAR_SOURCES, "cifar10", src)
    with pytest.raises(DatasetError, match="md5"):
        prepare("cifar10", tmp_path / "data")
    assert not (tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz").exists()


def test_cifar_archive_missing_files_is_malformed(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_cifar_archive(archive, drop=("test_batch",))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(sources.CIFAR_SOURCES, "cifar10",
                        dataclasses.replace(sources.CIFAR_SOURCES["cifar10"], url=archive.as_uri(), md5=md5))
    with pytest.raises(DatasetError, match=r"does not hold the expected files \['test_batch'\]"):
        prepare("cifar10", tmp_path / "data")


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-100-python.tar.gz"
    content = make_cifar_archive(archive, name="cifar100")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(sources.CIFAR_SOURCES, "cifar100",
                        dataclasses.replace(sources.CIFAR_SOURCES["cifar100"], url=archive.as_uri(), md5=md5))
    test = load_arrays("cifar100", "test", tmp_path / "data")
    assert test.labels.tolist() == content["test"][b"fine_labels"]


# -- ImageNet folder -------------------------------------------------------------


def make_imagenet(root, classes=("n01", "n02"), per_class=2):
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / split / c / f"{i}.JPEG", format="JPEG")


def test_imagenet_folder_is_checked_and_loads(tmp_path):
    make_imagenet(tmp_path / "imnet")
    assert check_imagenet(tmp_path / "imnet")["classes"] == 2
    folder = imagenet_folder(tmp_path / "imnet", "val")
    assert len(folder) == 4 and folder.classes == ["n01", "n02"]
    assert prepare("imagenet", tmp_path, imagenet_root=str(tmp_path / "imnet"))["classes"] == 2
    # the split the pipeline reads: labels without loading images, images at 224 px
    split = FolderSplit(str(tmp_path / "imnet"), "val", num_workers=0)
    assert split.labels.tolist() == [0, 0, 1, 1]
    x, y = split.get([0, 3])
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 1]


def _rm_val(root):
    shutil.rmtree(root / "val")


def _empty_class(root):
    for p in (root / "val" / "n02").iterdir():
        p.unlink()


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: r.rename(r.parent / "moved"), "does not exist"),
        (_rm_val, "val is missing"),
        (_empty_class, "class folders with no images: n02"),
        (lambda r: (r / "val" / "n02").rename(r / "val" / "n03"), "different class folders"),
    ],
    ids=["absent", "no-val", "empty-class", "class-mismatch"],
)
def test_imagenet_errors(tmp_path, breakage, message):
    root = tmp_path / "imnet"
    make_imagenet(root)
    breakage(root)
    with pytest.raises(DatasetError, match=message):
        check_imagenet(root)


def test_imagenet_root_unset():
    with pytest.raises(DatasetError, match="data.imagenet_root is not set"):
        check_imagenet(None)


# -- shapes ----------------------------------------------------------------------

SMALL = {"n_train": 60, "n_test": 20, "seed": 3, "noise": 0.03}


def test_shapes_prepare_is_deterministic_and_cached(tmp_path):
    a = load_arrays("shapes", "train", tmp_path / "a", shapes=SMALL)
    b = load_arrays("shapes", "train", tmp_path / "b", shapes=SMALL)
    assert a.images.tobytes() == b.images.tobytes() and (a.labels == b.labels).all()
    npz = tmp_path / "a" / "shapes" / "train.npz"
    stamp = npz.stat().st_mtime_ns
    load_arrays("shapes", "test", tmp_path / "a", shapes=SMALL)
    assert npz.stat().st_mtime_ns == stamp  # same config: nothing regenerated


def test_shapes_config_change_regenerates(tmp_path):
    a = load_arrays("shapes", "train", tmp_path, shapes=SMALL)
    b = load_arrays("shapes", "train", tmp_path, shapes={**SMALL, "seed": 4})
    assert a.images.tobytes() != b.images.tobytes()


def test_shapes_unreadable_file_is_reported(tmp_path):
    load_arrays("shapes", "train", tmp_path, shapes=SMALL)
    (tmp_path / "shapes" / "test.npz").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="test.npz is unreadable"):
        load_arrays("shapes", "test", tmp_path, shapes=SMALL)


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        prepare("mnist", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_arrays("shapes", "val", tmp_path, shapes=SMALL)
