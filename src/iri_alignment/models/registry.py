"""Build any model of the study by dataset and architecture name."""

from __future__ import annotations

import os

import torch

from ..data.specs import DatasetSpec, get_spec
from .base import ImageClassifier, load_weights_file
from .cifar import CIFAR_BACKBONES

ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "cifar": ("resnet18", "vgg16", "densenet121", "inceptionv3"),
    "imagenet": ("resnet18", "resnet50", "vgg16"),
    "folder": (),  # your own images: targets for external models, nothing is trained on them
}


def _check(dataset: str, arch: str, width: float) -> DatasetSpec:
    spec = get_spec(dataset)
    allowed = ARCHITECTURES[spec.family]
    if arch not in allowed:
        raise ValueError(f"unknown architecture {arch!r} for dataset {dataset!r}: choose one of {', '.join(allowed)}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width!r}")
    if spec.family == "imagenet" and width != 1:
        raise ValueError(f"width={width!r}: ImageNet architectures have no width multiplier; use 1.0")
    return spec


def _construct(spec: DatasetSpec, arch: str, width: float) -> ImageClassifier:
    if spec.family == "cifar":
        backbone = CIFAR_BACKBONES[arch](num_classes=spec.num_classes, width=width)
    else:
        from .imagenet import build_imagenet_backbone  # torchvision: imported only for ImageNet models (~2 s)

        backbone = build_imagenet_backbone(arch, spec.num_classes)
    return ImageClassifier(backbone, spec.mean, spec.std, arch=arch, dataset=spec.name, width=width)


def build_model(
    dataset: str,
    arch: str,
    width: float = 1.0,
    pretrained: bool = False,
    weights_path: str | os.PathLike | None = None,
) -> ImageClassifier:
    """Build a model taking [0, 1] images of ``dataset`` (normalisation is inside).

    Args:
        dataset: a dataset name known to :func:`iri_alignment.data.specs.get_spec`.
        arch: one of ``ARCHITECTURES[family]`` for the dataset's family.
        width: channel multiplier of the CIFAR-style architectures (default
            1.0); must be 1.0 for ImageNet.
        pretrained: load torchvision's ImageNet weights (ImageNet only),
            downloading them to the torch hub cache if needed. Nothing is ever
            downloaded otherwise.
        weights_path: a local weights file instead (state dict, ImageClassifier
            state dict, or robustness-library checkpoint; see
            :func:`iri_alignment.models.base.load_weights_file`).

    Returns:
        An :class:`ImageClassifier` on the CPU, in train mode (call ``.eval()``
        before inverting it), randomly initialised unless weights were asked for.

    Raises:
        ValueError: unknown dataset or architecture, a bad width, pretrained
            for a CIFAR-style model, or both pretrained and weights_path.
        ModelWeightsError: weights could not be downloaded, read or loaded.
    """
    spec = _check(dataset, arch, width)
    if pretrained and spec.family != "imagenet":
        raise ValueError(f"no pretrained weights for the CIFAR-style {arch!r}: train one or pass weights_path")
    if pretrained and weights_path is not None:
        raise ValueError("give either pretrained=True or weights_path, not both")
    model = _construct(spec, arch, width)
    if pretrained:
        from .imagenet import load_pretrained

        load_pretrained(model, arch)
    elif weights_path is not None:
        load_weights_file(model, weights_path)
    return model


def describe_model(dataset: str, arch: str, width: float = 1.0) -> dict:
    """Facts about a model without building its weights or downloading anything.

    Returns:
        dict with keys ``dataset``, ``arch``, ``width``, ``family``,
        ``num_classes``, ``input_size`` (image side in pixels), ``rep_dim`` and
        ``num_params`` (all parameters, an int).
    """
    spec = _check(dataset, arch, width)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = _construct(spec, arch, width)
    return {
        "dataset": spec.name,
        "arch": arch,
        "width": float(width),
        "family": spec.family,
        "num_classes": model.num_classes,
        "input_size": spec.image_size,
        "rep_dim": model.rep_dim,
        "num_params": int(sum(p.numel() for p in model.parameters())),
    }
