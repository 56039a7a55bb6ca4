"""Models from outside the study: pretrained, from a model zoo, or your own (``models.external``).

The DAG studies an external model like a trained one (evaluate -> invert ->
score -> report) with no training job. Its stand-in for a checkpoint is a
*descriptor*, ``results/models/<id>/external.json``, written by
``iri models inspect`` (the DAG's ``inspect_external`` rule): the entry, the
resolved representation layer and the inspection's checks. Everything that
loads a checkpoint (:func:`iri_alignment.checkpoints.load_model`) loads a
descriptor too, rebuilding the model from its pinned weights file.

    model, meta = load_external(find_external(params, "resnet50-salman-l2eps3"), params)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from iri_alignment.external.spec import (CLASSIFIER_INPUT, SOURCES, ExternalModel, ExternalModelError,
                                         external_models, find_external, parse_entry)

log = logging.getLogger(__name__)

DESCRIPTOR_FORMAT = "iri-alignment/external-model"

__all__ = ["DESCRIPTOR_FORMAT", "SOURCES", "ExternalModel", "ExternalModelError", "build_classifier",
           "external_models", "find_external", "is_descriptor", "load_descriptor", "load_external", "model_meta",
           "parse_entry"]


def _builtin_layer(model: ExternalModel) -> str | None:
    """The package backbone's representation for a torchvision/madrylab entry, or None
    when the entry asks for another layer (then the generic wrapper is used)."""
    if model.source not in ("torchvision", "madrylab"):
        return None
    name = "classifier.4" if model.table_arch == "vgg16" else "flatten"
    return name if model.layer in (CLASSIFIER_INPUT, name) else None


def _timm_defaults(model: ExternalModel, net) -> tuple[tuple | None, int | None]:
    """timm's own normalisation and input size for an entry that does not set them."""
    import timm.data

    cfg = timm.data.resolve_model_data_config(net)
    norm = model.normalize if "normalize" in model.entry else (tuple(cfg["mean"]), tuple(cfg["std"]))
    return norm, model.input_size or int(cfg["input_size"][-1])


def build_classifier(model: ExternalModel, *, dataset: str = "", input_size: int | None = None):
    """The model with the study's interface (``model(x, with_rep, fake_relu)``, ``represent``,
    ``rep_dim``), on the CPU, in eval mode, frozen.

    Args:
        model: the parsed entry.
        dataset: the study's dataset (bookkeeping; its class count is the default head size).
        input_size: the dataset's image side, used when the entry sets none.

    Returns:
        ``(classifier, resolved)``: ``resolved`` has ``layer``, ``layer_mode``, ``fake_relu``,
        ``input_size``, ``normalize``.
    """
    from iri_alignment.data.specs import DATASETS
    from iri_alignment.external.adapters import build_network
    from iri_alignment.models.base import ImageClassifier

    spec = DATASETS.get(dataset)
    classes = spec.num_classes if spec is not None and spec.num_classes else None  # folder: the model's own head
    net = build_network(model, None if model.source in ("torchvision", "madrylab", "timm") else classes)
    normalize, size = model.normalize, model.input_size or input_size or 224
    if model.source == "timm":
        normalize, size = _timm_defaults(model, net)
    mean, std = normalize if normalize else (None, None)
    builtin = _builtin_layer(model)
    if builtin and model.fake_relu is True:
        classifier = ImageClassifier(net, mean or (0.0, 0.0, 0.0), std or (1.0, 1.0, 1.0), arch=model.table_arch,
                                     dataset=dataset)
        resolved = {"layer": builtin, "layer_mode": "package backbone",
                    "fake_relu": "last block's final ReLU" if model.table_arch != "vgg16" else "classifier.4"}
    else:
        from iri_alignment.external.wrapper import ExternalClassifier

        bare = net.net if hasattr(net, "net") and hasattr(net, "features") else net
        fake = model.fake_relu
        if fake is True:
            modules = dict(bare.named_modules())
            if model.layer in modules and isinstance(modules[model.layer], torch.nn.ReLU):
                fake = model.layer
            else:
                raise ExternalModelError(f"{model.id}: fake_relu: true needs `layer` to be a ReLU module; name the "
                                         "ReLU to fake (fake_relu: <module path>) or set fake_relu: false")
        classifier = ExternalClassifier(bare, mean=mean, std=std, layer=model.layer, fake_relu_module=fake or None,
                                        input_size=size, arch=model.table_arch, dataset=dataset)
        resolved = {"layer": classifier.layer, "layer_mode": classifier.mode, "fake_relu": fake or None}
    resolved.update(input_size=size, normalize=[list(mean), list(std)] if mean else "inside the network")
    return classifier.eval(), resolved


def model_meta(model: ExternalModel, params: dict) -> dict:
    """What a checkpoint's ``meta`` says, for an external model (training provenance from the entry)."""
    from iri_alignment.params import params_hash

    study_eps = params["training"]["regime"].get("adversarial", {}).get("attack", {}).get("eps")
    eps = model.eps if model.eps is not None and model.norm in (None, "l2") else study_eps
    return {"dataset": params["data"]["dataset"], "arch": model.table_arch, "width": 1.0, "regime": model.regime,
            "epoch": None, "params_hash": params_hash({"entry": model.entry}), "metrics": {}, "replicate": 0,
            "eps": eps, "norm": model.norm, "external": True, "id": model.id, "source": model.source,
            "git_commit": None}


def check_input_size(model: ExternalModel, params: dict, size: int) -> None:
    """A named error when the study's dataset has another image size than the model takes."""
    from iri_alignment.data.specs import DATASETS

    dataset = params["data"]["dataset"]
    if dataset == "folder":
        want = params["data"]["folder"].get("size")
        if want and want != size:
            raise ExternalModelError(f"{model.id} takes {size} px images but data.folder.size is {want}; unset "
                                     "data.folder.size to resize the folder's images to each model's input")
        return
    spec = DATASETS.get(dataset)
    if spec is not None and spec.image_size != size:
        raise ExternalModelError(f"{model.id} takes {size} px images but data.dataset {dataset} has {spec.image_size} px; "
                                 f"study it on a dataset of its size (data.dataset: folder resizes any images "
                                 f"to data.folder.size) or set input_size in its entry")


def load_external(model: ExternalModel, params: dict, *, device="cpu"):
    """``(classifier, meta)`` of an external model on ``device``, checked against the study's dataset."""
    from iri_alignment.data.specs import DATASETS

    dataset = params["data"]["dataset"]
    size = params["data"]["folder"].get("size") if dataset == "folder" else DATASETS[dataset].image_size
    classifier, resolved = build_classifier(model, dataset=dataset, input_size=size)
    check_input_size(model, params, resolved["input_size"])
    return classifier.to(device), {**model_meta(model, params), "resolved": resolved}


def is_descriptor(path: str | Path) -> bool:
    return Path(path).suffix == ".json"


def load_descriptor(path: str | Path, *, device="cpu"):
    """``(classifier, meta)`` from a descriptor written by ``iri models inspect --out``."""
    from iri_alignment.checkpoints import CheckpointError
    from iri_alignment.io import read_json

    try:
        doc = read_json(path)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable external-model descriptor ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != DESCRIPTOR_FORMAT:
        raise CheckpointError(f"{path} is not an external-model descriptor (no format tag {DESCRIPTOR_FORMAT!r}); "
                              "write one with `iri models inspect --id ID --out PATH`")
    model = parse_entry(doc["entry"])
    return load_external(model, doc["params"], device=device)
