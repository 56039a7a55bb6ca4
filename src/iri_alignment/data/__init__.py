"""Datasets: what each one is (``specs``), where it comes from (``sources``),
the generated ``shapes`` dataset, and one entry point for the rest of the package."""

from __future__ import annotations

from pathlib import Path

from iri_alignment.data.sources import (
    ArraySplit,
    DatasetError,
    check_imagenet,
    load_cifar,
    load_shapes,
    prepare_cifar,
    prepare_shapes,
)
from iri_alignment.data.specs import DATASETS, DatasetSpec, get_spec

__all__ = ["ArraySplit", "DATASETS", "DatasetError", "DatasetSpec", "get_spec", "load_arrays", "prepare"]


def prepare(dataset: str, root: str | Path, *, shapes: dict | None = None, imagenet_root: str | None = None,
            download: bool = True) -> dict:
    """Make ``dataset`` ready on disk and return a summary (what, where, sizes).

    Args:
        dataset: ``cifar10``, ``cifar100``, ``imagenet`` or ``shapes``.
        root: the data root (``data.root``).
        shapes: the ``data.shapes`` params (n_train, n_test, seed, noise); shapes only.
        imagenet_root: the ImageNet folder (``data.imagenet_root``); imagenet only.
        download: allow downloading CIFAR archives (default True).
    """
    get_spec(dataset)
    if dataset == "imagenet":
        return {"dataset": dataset, **check_imagenet(imagenet_root)}
    if dataset == "shapes":
        folder = prepare_shapes(root, **(shapes or {}))
    else:
        folder = prepare_cifar(dataset, root, download=download)
    sizes = {split: len(load_arrays(dataset, split, root, shapes=shapes, download=download)) for split in ("train", "test")}
    return {"dataset": dataset, "path": str(Path(folder).resolve()), **sizes}


def load_arrays(dataset: str, split: str, root: str | Path, *, shapes: dict | None = None,
                download: bool = True) -> ArraySplit:
    """Load a split of a 32 px dataset into memory (uint8 NHWC images, int64 labels)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
    if dataset == "shapes":
        return load_shapes(split, root, **(shapes or {}))
    if dataset in ("cifar10", "cifar100"):
        return load_cifar(dataset, split, root, download=download)
    raise ValueError(f"{dataset!r} is not an in-memory dataset (ImageNet loads through an ImageFolder)")
