"""What the rest of the package needs to know about each dataset."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset.

    Attributes:
        name: registry name (``cifar10``, ``cifar100``, ``imagenet``, ``shapes``).
        num_classes: number of labels.
        image_size: side of the square model input, in pixels.
        mean, std: per-channel normalisation applied inside every model; the
            model itself takes images in [0, 1].
        family: ``"cifar"`` for 32 px datasets (CIFAR-style architectures),
            ``"imagenet"`` for 224 px (torchvision architectures), ``"folder"``
            for the user's own images (``data.folder``; no training, any size:
            ``num_classes`` and ``image_size`` are 0 here and come from the folder
            and ``data.folder.size``, see :func:`iri_alignment.data.folder.folder_info`).
    """

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    family: str


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", 10, 32, CIFAR_MEAN, CIFAR_STD, "cifar"),
    "cifar100": DatasetSpec("cifar100", 100, 32, CIFAR_MEAN, CIFAR_STD, "cifar"),
    "imagenet": DatasetSpec("imagenet", 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet"),
    # The embedded dataset is CIFAR-shaped and uses CIFAR's statistics, so a
    # model trained on it is normalised exactly like a CIFAR model.
    "shapes": DatasetSpec("shapes", 10, 32, CIFAR_MEAN, CIFAR_STD, "cifar"),
    "folder": DatasetSpec("folder", 0, 0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "folder"),
}


def get_spec(name: str) -> DatasetSpec:
    """Return the spec of a dataset, or a ValueError naming the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}") from None
