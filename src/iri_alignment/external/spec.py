"""One ``models.external`` entry of ``params.yaml``, with its defaults filled in.

An entry names a model the study takes from outside instead of training it::

    models:
      external:
        - id: resnet50-salman-l2eps3          # results/models/<id>/, the tables
          source: madrylab                    # torchvision | timm | madrylab | robustbench | factory
          arch: resnet50
          weights: {file: data/weights/resnet50_l2_eps3.ckpt, sha256: 380b14e6..., url: https://...}
          training: {regime: adversarial, norm: l2, eps: 3.0}

Defaults by source (any of them may be set in the entry):

============  ==============  ==============  ============================  =========
source        normalize       input_size      layer (the representation)    fake_relu
============  ==============  ==============  ============================  =========
torchvision   imagenet        224             input of the last linear      true
madrylab      imagenet        224             input of the last linear      true
timm          the model's     the model's     input of the last linear      false
robustbench   none (inside)   32              input of the last linear      false
factory       none            dataset's       input of the last linear      false
============  ==============  ==============  ============================  =========
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from iri_alignment.data.specs import CIFAR_MEAN, CIFAR_STD, DATASETS

SOURCES = ("torchvision", "timm", "madrylab", "robustbench", "factory")
#: torchvision architectures with a built-in representation and fake ReLU (the paper's ImageNet models)
TORCHVISION_ARCHS = {"resnet18": "resnet18", "resnet50": "resnet50", "vgg16_bn": "vgg16", "vgg16": "vgg16"}
CLASSIFIER_INPUT = "@classifier_input"
NORMALIZATIONS = {"imagenet": (DATASETS["imagenet"].mean, DATASETS["imagenet"].std), "cifar10": (CIFAR_MEAN, CIFAR_STD)}
REPLICATE_SUFFIX = re.compile(r"-r\d+$")


class ExternalModelError(ValueError):
    """An external model's entry, file or network does not fit; the message names the model and what to do."""


@dataclass(frozen=True)
class ExternalModel:
    """A ``models.external`` entry with defaults resolved (module docstring).

    Attributes:
        id: results/models/<id>/ and the tables' model id.
        source: where the architecture comes from (:data:`SOURCES`).
        arch: the source's architecture name.
        weights: ``{file, sha256, url?, format}`` or None (a factory that builds its own weights).
        normalize: ``(mean, std)``, or None when the model normalises inside.
        input_size: square input side in pixels, or None (the dataset's).
        layer: module path, torch.fx node name, or :data:`CLASSIFIER_INPUT`.
        fake_relu: True, False, or the module path of a ReLU called once per forward.
        regime, norm, eps: provenance (the tables' training column and significance families).
        entry: the entry as written (part of every downstream job's hash).
    """

    id: str
    source: str
    arch: str
    factory: str | None
    factory_kwargs: dict
    weights: dict | None
    allow_pickle: bool
    normalize: tuple | None
    input_size: int | None
    num_classes: int | None
    layer: str
    fake_relu: bool | str
    regime: str
    norm: str | None
    eps: float | None
    entry: dict = field(compare=False)

    @property
    def table_arch(self) -> str:
        """The architecture as the tables name it (torchvision's vgg16_bn is the paper's VGG16)."""
        if self.source in ("torchvision", "madrylab"):
            return TORCHVISION_ARCHS.get(self.arch, self.arch)
        return self.arch


def _normalization(value, source: str):
    if value is None:
        value = {"torchvision": "imagenet", "madrylab": "imagenet"}.get(source, "none")
    if isinstance(value, dict):
        if len(value["mean"]) != len(value["std"]):
            raise ExternalModelError(f"normalize: mean has {len(value['mean'])} values but std {len(value['std'])}")
        return tuple(value["mean"]), tuple(value["std"])
    return NORMALIZATIONS.get(value)  # "none" -> None


def parse_entry(entry: dict) -> ExternalModel:
    """An :class:`ExternalModel` from one validated ``models.external`` entry.

    Raises:
        ExternalModelError: a combination the schema cannot express is wrong
            (a factory without ``factory``, weights missing for a source that needs them, ...).
    """
    mid, source = entry["id"], entry["source"]
    where = f"models.external[{mid}]"
    if REPLICATE_SUFFIX.search(mid) or "@" in mid:
        raise ExternalModelError(f"{where}.id: {mid!r} ends like a training replicate (-r<k>); choose another id")
    if source == "factory" and not entry.get("factory"):
        raise ExternalModelError(f'{where}: source factory needs `factory: "package.module:function"`')
    for key in ("factory", "factory_kwargs"):
        if source != "factory" and entry.get(key):
            raise ExternalModelError(f"{where}.{key}: only for source factory (this entry's source is {source})")
    if source in ("torchvision", "madrylab") and entry["arch"] not in TORCHVISION_ARCHS:
        raise ExternalModelError(f"{where}.arch: {entry['arch']!r} is not a {source} architecture here; choose one of "
                                 "resnet18, resnet50, vgg16_bn (or use source factory for another torchvision model)")
    if source != "factory" and not entry.get("weights"):
        raise ExternalModelError(f"{where}: source {source} needs `weights: {{file, sha256}}` (every file is pinned by "
                                 "its sha256; `iri models fetch` downloads it when `url` is given)")
    weights = dict(entry["weights"]) if entry.get("weights") else None
    if weights is not None:
        weights.setdefault("format", {"madrylab": "madrylab", "robustbench": "robustbench"}.get(source, "auto"))
    training = entry.get("training", {})
    fake_default = source in ("torchvision", "madrylab")
    return ExternalModel(
        id=mid, source=source, arch=entry["arch"], factory=entry.get("factory"),
        factory_kwargs=dict(entry.get("factory_kwargs", {})), weights=weights,
        allow_pickle=bool(entry.get("allow_pickle", False)),
        normalize=_normalization(entry.get("normalize"), source),
        input_size=entry.get("input_size", 224 if source in ("torchvision", "madrylab") else
                             32 if source == "robustbench" else None),
        num_classes=entry.get("num_classes"), layer=entry.get("layer", CLASSIFIER_INPUT),
        fake_relu=entry.get("fake_relu", fake_default), regime=training.get("regime", "standard"),
        norm=training.get("norm"), eps=training.get("eps"), entry=dict(entry),
    )


def external_models(params: dict) -> list[ExternalModel]:
    """Every ``models.external`` entry of the study, parsed (empty list when none)."""
    return [parse_entry(e) for e in params["models"].get("external", [])]


def find_external(params: dict, model_id: str) -> ExternalModel:
    """The external model ``model_id``; an ExternalModelError lists the ids there are."""
    models = external_models(params)
    for m in models:
        if m.id == model_id:
            return m
    known = ", ".join(m.id for m in models) or "none"
    raise ExternalModelError(f"no external model {model_id!r} in models.external of this profile (there are: {known})")
