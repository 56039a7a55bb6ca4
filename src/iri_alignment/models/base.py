"""The model interface every architecture shares: fake ReLU, normalisation, penultimate representation.

A *backbone* is any ``nn.Module`` with

* ``features(x, fake_relu: bool) -> rep``: ``x`` is an already normalised
  NCHW batch, ``rep`` the (N, rep_dim) penultimate representation, i.e. the
  input of the final linear classifier after global pooling;
* ``fc``: that final ``nn.Linear`` (rep_dim -> num_classes);
* optionally ``net``: the module whose ``state_dict`` is the architecture's
  canonical weight format (the torchvision model for ImageNet architectures);
  without it the backbone itself is that module.

:class:`ImageClassifier` wraps a backbone with the dataset normalisation so
that the model takes images in [0, 1], as inversion and attacks need.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ModelWeightsError(RuntimeError):
    """Weights could not be downloaded, read, or loaded into the model."""


class FakeReLU(torch.autograd.Function):
    r"""ReLU in the forward pass, identity in the backward pass.

    Forward:  :math:`y = \max(x, 0)`.
    Backward: :math:`\partial L / \partial x = \partial L / \partial y`, i.e. the
    Jacobian is taken to be the identity instead of :math:`\mathrm{diag}(1[x > 0])`,
    so units that are switched off still pass gradient to the input.

    Used on the last ReLU before global pooling when inverting a representation
    (Engstrom et al. 2019, "Adversarial robustness as a prior for learned
    representations"; ``fake_relu`` in MadryLab's ``robustness`` library): a
    target unit at zero otherwise gets no gradient and can never be matched.
    Written in the ``setup_context`` form, so ``torch.func`` transforms
    (``vmap`` over stacked replicate models, ``grad``) work through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass  # the backward needs nothing saved

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def relu(x: torch.Tensor, fake: bool = False) -> torch.Tensor:
    """``F.relu(x)``, or :class:`FakeReLU` when ``fake`` is true (same forward value)."""
    return FakeReLU.apply(x) if fake else F.relu(x)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling of an (N, C, H, W) map to an (N, C) matrix."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class ImageClassifier(nn.Module):
    """A backbone plus the dataset normalisation: images in [0, 1] in, logits out.

    Args:
        backbone: module with ``features(x_normalised, fake_relu) -> rep`` and a
            final linear layer ``fc`` (see the module docstring).
        mean, std: per-channel normalisation constants; stored as
            (1, C, 1, 1) buffers so ``.to(device/dtype)`` moves them. They are
            non-persistent: the state dict holds only the backbone's weights.
        arch, dataset, width: recorded for bookkeeping (defaults ``""``, ``""``, 1.0).

    Input: float NCHW images with values in [0, 1] (not normalised).

    Attributes:
        rep_dim: size of the penultimate representation (``fc.in_features``).
        num_classes: number of logits (``fc.out_features``).
        arch, dataset, width: as given.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        arch: str = "",
        dataset: str = "",
        width: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.arch = arch
        self.dataset = dataset
        self.width = float(width)
        self.rep_dim: int = backbone.fc.in_features
        self.num_classes: int = backbone.fc.out_features

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] images to the normalised input of the backbone."""
        return (x - self.mean) / self.std

    def represent(self, x: torch.Tensor, fake_relu: bool = False, normalize: bool = True) -> torch.Tensor:
        """Penultimate representation (N, rep_dim) of images ``x`` in [0, 1].

        ``normalize=False`` skips the dataset normalisation (``x`` is then
        taken to be normalised already).
        """
        return self.backbone.features(self.normalize(x) if normalize else x, fake_relu)

    def forward(
        self, x: torch.Tensor, with_rep: bool = False, fake_relu: bool = False, normalize: bool = True
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of images ``x`` in [0, 1]; ``(logits, rep)`` when ``with_rep`` is true.

        ``fake_relu`` swaps the last ReLU before pooling for :class:`FakeReLU`
        (same values, straight-through gradient); ``normalize`` as in :meth:`represent`.
        """
        rep = self.represent(x, fake_relu, normalize)
        logits = self.backbone.fc(rep)
        return (logits, rep) if with_rep else logits

    @property
    def weights_module(self) -> nn.Module:
        """The module whose state dict is this architecture's canonical weight format."""
        return self.backbone.net if hasattr(self.backbone, "net") else self.backbone

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, dataset={self.dataset!r}, width={self.width}, rep_dim={self.rep_dim}"


# ---------------------------------------------------------------------------
# Loading weights from a local file.

_DROPPED_PREFIXES = ("module.attacker.", "module.normalizer.", "attacker.", "normalizer.")


def extract_state_dict(checkpoint: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the model weights held in a loaded checkpoint, with wrapper prefixes removed.

    Accepts a plain state dict, or a dict with a ``"model"`` or ``"state_dict"``
    entry holding one (MadryLab ``robustness`` checkpoints such as Salman et
    al. 2020's). Keys of the robustness library's attacker and normaliser
    (``module.attacker.*``, ``module.normalizer.*``) are dropped, and a
    ``module.model.`` (robustness library) or ``module.`` (DataParallel)
    prefix shared by all remaining keys is stripped.

    Raises:
        ModelWeightsError: the checkpoint holds no mapping of names to tensors.
    """
    state = checkpoint
    if isinstance(state, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise ModelWeightsError(f"{source} holds no state dict (got {type(checkpoint).__name__})")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelWeightsError(f"{source} is not a state dict of tensors: e.g. entry {bad[0]!r}")
    kept = {k: v for k, v in state.items() if not k.startswith(_DROPPED_PREFIXES)}
    for prefix in ("module.model.", "module."):
        if kept and all(k.startswith(prefix) for k in kept):
            kept = {k[len(prefix):]: v for k, v in kept.items()}
            break
    return kept


def load_state_dict_checked(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a short, clear error.

    Raises:
        ModelWeightsError: missing or unexpected keys, or shapes that differ;
            the message names ``source`` and a few offending keys.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise ModelWeightsError(f"weights in {source} do not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def load_weights_file(model: ImageClassifier, path: str | os.PathLike) -> None:
    """Load local weights into ``model`` (in place), on the model's current device.

    The file is read with ``torch.load(..., weights_only=True)``. It may hold
    the model's canonical weights (the torchvision state dict for ImageNet
    architectures, the backbone's for CIFAR ones), a full
    :class:`ImageClassifier` state dict (keys ``backbone.*``), or either
    wrapped as described in :func:`extract_state_dict`.

    Raises:
        ModelWeightsError: the file is missing, unreadable, or does not fit.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelWeightsError(f"weights file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, zip errors, EOFError, OSError, ...
        raise ModelWeightsError(f"could not read weights file {path}: {type(err).__name__}: {err}") from err
    state = extract_state_dict(checkpoint, source=path)
    if all(k.startswith("backbone.") for k in state):
        load_state_dict_checked(model, state, path)
    else:
        load_state_dict_checked(model.weights_module, state, path)
