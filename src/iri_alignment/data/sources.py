"""Getting datasets onto disk and back: CIFAR-10/100 download with checksum
verification, a local ImageNet folder, and the generated ``shapes`` dataset.

Layout under the data root (``data.root`` in params.yaml, default ``data/``)::

    data/cifar10/cifar-10-python.tar.gz      the official archive, md5-verified
    data/cifar10/cifar-10-batches-py/        extracted on first use
    data/cifar100/cifar-100-python.tar.gz
    data/shapes/{train,test}.npz, meta.json  generated, deterministic from a seed

CIFAR and shapes load as in-memory arrays (uint8 NHWC images, int64 labels);
ImageNet loads as a torchvision ``ImageFolder``.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iri_alignment.io import atomic_write, read_json, write_json

log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or malformed; the message says how to fix it."""


@dataclass(frozen=True)
class ArraySplit:
    """One split held in memory: ``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class CifarSource:
    """Where an official CIFAR archive lives and what it must hash to."""

    url: str
    filename: str
    md5: str
    folder: str  # top folder inside the archive
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes


CIFAR_SOURCES = {
    "cifar10": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key=b"labels",
    ),
    "cifar100": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key=b"fine_labels",
    ),
}


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` to ``dest`` with a progress bar; keep it only if the md5 matches."""
    from tqdm.auto import tqdm

    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, atomic_write(dest) as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DatasetError(
            f"could not download {dest.name} from {url} ({err}). Without network access, download it "
            f"elsewhere and place it at {dest.resolve()} (md5 {md5}), then run the command again."
        ) from None
    _verify_md5(dest, md5, remove=True)


def _verify_md5(path: Path, md5: str, *, remove: bool = False) -> None:
    actual = md5sum(path)
    if actual != md5:
        if remove:
            path.unlink()
        raise DatasetError(
            f"{path} has md5 {actual} but the official archive has md5 {md5}: the file is corrupt or "
            f"incomplete. Delete it and run the command again (or place a correct copy there)."
        )


def prepare_cifar(name: str, root: str | Path, *, download: bool = True) -> Path:
    """Make sure CIFAR ``name`` is on disk, verified and extracted; return its folder.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: the data root; the archive goes to ``root/name/``.
        download: fetch the archive if it is missing (default True). Without
            network access place the archive there by hand; the error says where.
    """
    src = CIFAR_SOURCES[name]
    folder = Path(root) / name
    archive = folder / src.filename
    extracted = folder / src.folder
    done = extracted / ".verified"
    if done.exists():
        return extracted
    if not archive.exists():
        if not download:
            raise DatasetError(f"{archive.resolve()} is missing: place the official {src.filename} (md5 {src.md5}) there")
        folder.mkdir(parents=True, exist_ok=True)
        _download(src.url, archive, src.md5)
    else:
        _verify_md5(archive, src.md5)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetError(f"{archive} could not be extracted ({err}); delete it and run again") from None
    missing = [f for f in (*src.train_files, *src.test_files) if not (extracted / f).is_file()]
    if missing:
        raise DatasetError(f"{archive} does not hold the expected files {missing} under {src.folder}/")
    done.write_text(src.md5 + "\n")
    return extracted


def load_cifar(name: str, split: str, root: str | Path, *, download: bool = True) -> ArraySplit:
    """Load a CIFAR split (``"train"`` or ``"test"``) as in-memory arrays."""
    src = CIFAR_SOURCES[name]
    folder = prepare_cifar(name, root, download=download)
    images, labels = [], []
    for fname in src.train_files if split == "train" else src.test_files:
        try:
            with open(folder / fname, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[src.label_key], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
            raise DatasetError(f"{folder / fname} is malformed ({err!r}); delete {folder} and run again") from None
    return ArraySplit(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


# -- shapes -----------------------------------------------------------------------


def prepare_shapes(root: str | Path, *, n_train: int, n_test: int, seed: int, noise: float) -> Path:
    """Generate the shapes dataset into ``root/shapes`` unless the same
    configuration is already there; return the folder."""
    from iri_alignment.data.shapes import GENERATOR_VERSION, make_splits

    folder = Path(root) / "shapes"
    config = {"n_train": n_train, "n_test": n_test, "seed": seed, "noise": noise, "generator": GENERATOR_VERSION}
    meta_path = folder / "meta.json"
    if meta_path.exists() and read_json(meta_path).get("config") == config:
        if all((folder / f"{s}.npz").exists() for s in ("train", "test")):
            return folder
    log.info("generating shapes dataset %s into %s", config, folder)
    splits = make_splits(n_train, n_test, seed, noise=noise)
    checksums = {}
    for split, (images, labels) in splits.items():
        with atomic_write(folder / f"{split}.npz") as fh:
            np.savez(fh, images=images, labels=labels)
        checksums[split] = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    write_json(meta_path, {"config": config, "sha256": checksums})
    return folder


def load_shapes(split: str, root: str | Path, **config) -> ArraySplit:
    """Load (generating first if needed) one split of the shapes dataset."""
    folder = prepare_shapes(root, **config)
    try:
        with np.load(folder / f"{split}.npz") as data:
            return ArraySplit(data["images"], data["labels"])
    except (OSError, ValueError, KeyError) as err:
        raise DatasetError(f"{folder / f'{split}.npz'} is unreadable ({err}); delete {folder} and run again") from None


# -- ImageNet ---------------------------------------------------------------------

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def check_imagenet(root: str | Path | None) -> dict:
    """Check that ``root`` is an ImageFolder tree with ``train/`` and ``val/``
    holding the same class folders; return counts. Never downloads anything."""
    if not root:
        raise DatasetError("data.imagenet_root is not set: point it (or --root) at a folder with train/ and val/")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"ImageNet folder {root} does not exist; set data.imagenet_root (or --root) to it")
    classes = {}
    for split in ("train", "val"):
        sub = root / split
        if not sub.is_dir():
            raise DatasetError(f"{sub} is missing: ImageNet needs {root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG")
        classes[split] = sorted(d.name for d in sub.iterdir() if d.is_dir())
        if not classes[split]:
            raise DatasetError(
                f"{sub} has no class folders: put each class's images in {sub}/<wnid>/ (val/ too: "
                "re-arrange the flat validation images into class folders)"
            )
        empty = [c for c in classes[split] if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in (sub / c).iterdir())]
        if empty:
            raise DatasetError(f"{sub} has class folders with no images: {', '.join(empty[:5])}")
    if classes["train"] != classes["val"]:
        diff = sorted(set(classes["train"]) ^ set(classes["val"]))
        raise DatasetError(f"{root}: train/ and val/ hold different class folders, e.g. {', '.join(diff[:5])}")
    return {"root": str(root), "classes": len(classes["train"])}


def read_rgb(path: str):
    """The image at ``path`` as an RGB PIL image (ImageFolder's loader); a file PIL cannot
    read (a corrupt download, a text file named .png) is a DatasetError naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f, Image.open(f) as image:
            return image.convert("RGB")
    except OSError as err:  # PIL.UnidentifiedImageError and truncated files are OSErrors
        raise DatasetError(f"{path} is not an image that PIL can read ({type(err).__name__}: {err}); "
                           "remove it from the dataset folder or convert it") from None


def imagenet_folder(root: str | Path, split: str, transform=None):
    """A torchvision ImageFolder over ``root/split`` (``train`` or ``val``)."""
    from torchvision.datasets import ImageFolder

    check_imagenet(root)
    return ImageFolder(str(Path(root) / split), transform=transform, loader=read_rgb)
