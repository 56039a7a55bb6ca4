"""Build an external model's network and strict-load its weights, one adapter per source.

Each adapter returns the bare network (normalisation is added by the wrapper,
:mod:`iri_alignment.external.wrapper`), in eval mode, with every weight loaded
strictly: a missing, unexpected or mis-shaped tensor is an error naming it.

* ``torchvision``: torchvision's ``resnet18`` / ``resnet50`` / ``vgg16_bn`` and a
  state dict file (e.g. ``resnet18-f37072fd.pth``).
* ``madrylab``: the same architectures and a ``robustness``-library checkpoint
  (Salman et al. 2020): exactly the four key prefixes ``module.model.``,
  ``module.attacker.model.``, ``module.normalizer.``, ``module.attacker.normalize.``;
  the attacker's copy must equal the model's; ``module.model.*`` is loaded.
  No ``dill``, no CUDA, no ``robustness`` package.
* ``timm``: ``timm.create_model(arch, pretrained=False)`` and a local file.
* ``robustbench``: the architecture from RobustBench's model zoo (the
  ``robustbench`` package; its ``load_model`` is never called: it downloads
  from Google Drive into a folder relative to the working directory and may
  load non-strictly) and a hash-pinned file.
* ``factory``: ``package.module:function`` returning an ``nn.Module``,
  optionally with a weights file.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch
from torch import nn

from iri_alignment.external.spec import TORCHVISION_ARCHS, ExternalModel, ExternalModelError
from iri_alignment.external.weights import read_weights
from iri_alignment.models.base import ModelWeightsError, load_state_dict_checked

MADRYLAB_PREFIXES = ("module.model.", "module.attacker.model.", "module.normalizer.", "module.attacker.normalize.")
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping inside a loaded checkpoint (a plain state dict, or one under
    ``state_dict_ema`` / ``model_ema`` / ``state_dict`` / ``model``)."""
    state = obj
    if isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, Mapping) or not state:
        raise ExternalModelError(f"{source} holds no state dict (got {type(obj).__name__})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ExternalModelError(f"{source} is not a state dict of tensors: e.g. entry {bad[0]!r}")
    return dict(state)


def madrylab_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The classifier's weights from a robustness-library checkpoint (module docstring), checked."""
    state = unwrap_state_dict(obj, source)
    stray = sorted(k for k in state if not k.startswith(MADRYLAB_PREFIXES))
    if stray:
        raise ExternalModelError(f"{source} is not a robustness-library checkpoint: keys outside the prefixes "
                                 f"{', '.join(MADRYLAB_PREFIXES)}, e.g. {', '.join(stray[:3])}")
    model = {k[len("module.model."):]: v for k, v in state.items() if k.startswith("module.model.")}
    attacker = {k[len("module.attacker.model."):]: v for k, v in state.items() if k.startswith("module.attacker.model.")}
    if not model:
        raise ExternalModelError(f"{source} has no module.model.* weights")
    if attacker and (attacker.keys() != model.keys() or any(not torch.equal(attacker[k], model[k]) for k in model)):
        raise ExternalModelError(f"{source}: the attacker's copy of the weights differs from the model's; "
                                 "the file is damaged or not a robustness-library checkpoint")
    mean = state.get("module.normalizer.new_mean")
    if mean is not None:
        from iri_alignment.data.specs import DATASETS

        want = torch.tensor(DATASETS["imagenet"].mean)
        if not torch.allclose(mean.flatten().float(), want, atol=1e-3):
            raise ExternalModelError(f"{source}: its normaliser's mean {mean.flatten().tolist()} is not ImageNet's; "
                                     "set `normalize: {mean, std}` in the entry to the checkpoint's own")
    return model


def _strict_load(net: nn.Module, state: dict[str, torch.Tensor], source: str, prefixes=("",)) -> None:
    """Strict-load ``state`` into ``net``, trying each prefix in turn to strip; the first attempt's error if none fits."""
    first = None
    for prefix in prefixes:
        if prefix and not all(k.startswith(prefix) for k in state):
            continue
        stripped = {k[len(prefix):]: v for k, v in state.items()}
        try:
            load_state_dict_checked(net, stripped, source)
            return
        except ModelWeightsError as err:
            first = first or err
    raise ExternalModelError(str(first)) from None


def _torchvision(model: ExternalModel, num_classes: int):
    from iri_alignment.models.imagenet import build_imagenet_backbone

    backbone = build_imagenet_backbone(TORCHVISION_ARCHS[model.arch], num_classes)
    obj = read_weights(model)
    source = model.weights["file"]
    fmt = model.weights["format"]
    if fmt == "madrylab" or (fmt == "auto" and isinstance(obj, Mapping) and
                             any(k.startswith("module.attacker.") for k in unwrap_state_dict(obj, source))):
        _strict_load(backbone.net, madrylab_state_dict(obj, source), source)
    else:
        _strict_load(backbone.net, unwrap_state_dict(obj, source), source, ("", "module.", "_orig_mod."))
    return backbone


def _timm(model: ExternalModel, num_classes: int | None) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ExternalModelError(f"{model.id}: source timm needs the timm package (pip install timm)") from None
    kwargs = {"num_classes": num_classes} if num_classes else {}
    try:
        net = timm.create_model(model.arch, pretrained=False, **kwargs)
    except RuntimeError as err:
        raise ExternalModelError(f"{model.id}: timm has no model {model.arch!r} ({err})") from None
    if model.weights:
        source = model.weights["file"]
        _strict_load(net, unwrap_state_dict(read_weights(model), source), source, ("", "module.", "_orig_mod."))
    return net


def robustbench_constructor(name: str):
    """RobustBench's model-zoo constructor of ``name`` (CIFAR-10, CIFAR-100, ImageNet; any threat model)."""
    try:  # the package itself first: a half-imported one can leave robustbench.model_zoo in sys.modules
        importlib.import_module("robustbench")
        zoo = importlib.import_module("robustbench.model_zoo")
    except ImportError:
        raise ExternalModelError(f"source robustbench needs the robustbench package for the architecture of {name!r} "
                                 "(pip install robustbench); its weights come from your pinned file") from None
    for module in ("cifar10", "cifar100", "imagenet"):
        sub = importlib.import_module(f"{zoo.__name__}.{module}")
        for table in (v for v in vars(sub).values() if isinstance(v, Mapping)):
            for threat in table.values():
                if isinstance(threat, Mapping) and name in threat and "model" in threat[name]:
                    return threat[name]["model"]
    raise ExternalModelError(f"RobustBench's zoo has no model {name!r}")


def _robustbench(model: ExternalModel) -> nn.Module:
    net = robustbench_constructor(model.arch)()
    source = model.weights["file"]
    _strict_load(net, unwrap_state_dict(read_weights(model), source), source, ("", "module.", "model.", "module.model."))
    return net


def call_factory(model: ExternalModel) -> nn.Module:
    """Import ``package.module:function`` and call it with ``factory_kwargs``; it must return an ``nn.Module``."""
    module_name, _, attr = model.factory.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ExternalModelError(f"{model.id}: factory {model.factory!r} cannot be imported ({err}); is its package "
                                 "installed or on PYTHONPATH?") from None
    net = fn(**model.factory_kwargs)
    if not isinstance(net, nn.Module):
        raise ExternalModelError(f"{model.id}: factory {model.factory!r} returned {type(net).__name__}, not an nn.Module")
    return net


def _factory(model: ExternalModel) -> nn.Module:
    net = call_factory(model)
    if model.weights:
        source = model.weights["file"]
        obj = read_weights(model)
        state = (madrylab_state_dict(obj, source) if model.weights["format"] == "madrylab"
                 else unwrap_state_dict(obj, source))
        prefixes = ("", "module.", "model.", "module.model.", "_orig_mod.")
        _strict_load(net, state, source, prefixes)
    return net


def build_network(model: ExternalModel, num_classes: int | None = None) -> nn.Module:
    """The network of ``model`` with its weights, on the CPU, in eval mode, parameters frozen.

    For ``torchvision`` / ``madrylab`` the result is a package backbone
    (``features(x, fake_relu)``, ``fc``, ``net`` = the torchvision model); for
    the other sources the source's own module.

    Args:
        model: the parsed entry.
        num_classes: classes of the classifier head (default: the entry's, else
            1000 for torchvision/madrylab, else the source's default).
    """
    num_classes = model.num_classes or num_classes
    if model.source in ("torchvision", "madrylab"):
        net = _torchvision(model, num_classes or 1000)
    elif model.source == "timm":
        net = _timm(model, num_classes)
    elif model.source == "robustbench":
        net = _robustbench(model)
    else:
        net = _factory(model)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
