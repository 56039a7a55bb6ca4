"""The study's model interface around any network: [0, 1] pixels in, logits and a representation out.

:class:`ExternalClassifier` behaves like :class:`~iri_alignment.models.ImageClassifier`
(``model(x)``, ``model(x, with_rep=True, fake_relu=True)``, ``model.represent(x)``,
``rep_dim``, ``num_classes``), so evaluation, attacks and inversion take it
unchanged. Contract:

* input: float NCHW images in [0, 1] at the model's input size; the
  normalisation ``(x - mean) / std`` happens inside, **without a clamp** (the
  inversion's step keeps pixels in [0, 1]; a clamp would zero gradients);
* representation: the tensor at ``layer``, flattened to (N, D): a module path
  (the module's output, by a forward hook), a torch.fx node name (e.g.
  ``flatten``; through torchvision's ``create_feature_extractor``), or
  ``@classifier_input``, the input of the last ``nn.Linear`` the forward pass
  runs (the paper's "penultimate layer" for any classifier);
* fake ReLU (Engstrom et al.): a named ``nn.ReLU`` module, called exactly once
  per forward pass, returns :class:`~iri_alignment.models.FakeReLU` of its
  input when ``fake_relu=True`` (same values, identity gradient). torchvision
  ResNet blocks reuse one ``relu`` module 2-3 times, so for torchvision and
  robustness-library ResNets the package's own backbone fakes only the last
  block's final ReLU instead (:mod:`iri_alignment.models.imagenet`).
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from iri_alignment.external.spec import CLASSIFIER_INPUT, ExternalModelError
from iri_alignment.models.base import FakeReLU


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1) if t.dim() > 2 else t


def last_linear(net: nn.Module, probe: torch.Tensor) -> str:
    """The module path of the last ``nn.Linear`` a forward pass of ``probe`` runs."""
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda mod, inp, name=name: order.append(name))
               for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            net(probe)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ExternalModelError("layer @classifier_input: the network runs no nn.Linear layer; name the "
                                 "representation's layer (a module path or torch.fx node) in `layer`")
    return order[-1]


def fx_node_names(net: nn.Module) -> list[str]:
    """torch.fx node names of ``net`` in eval mode (empty when it cannot be traced)."""
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        return get_graph_node_names(net)[1]
    except Exception:  # noqa: BLE001 -- any tracing failure means: no fx names to offer
        return []


def nearest_names(name: str, candidates: list[str], n: int = 6) -> list[str]:
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.3) or candidates[-n:]


class ExternalClassifier(nn.Module):
    """A network with the study's interface (module docstring).

    Args:
        net: the bare network (logits from normalised input); eval mode, frozen.
        mean, std: per-channel normalisation, or None when ``net`` normalises inside.
        layer: the representation (module path, fx node, or ``@classifier_input``; default the latter).
        fake_relu_module: module path of the ReLU to fake, or None (``fake_relu=True`` then changes nothing).
        input_size: image side in pixels (for the probe that resolves ``@classifier_input``; default 224).
        arch, dataset: bookkeeping.

    Raises:
        ExternalModelError: the layer or the fake-ReLU module does not exist
            (the message lists the nearest names), or the fake ReLU is not an ``nn.ReLU``.
    """

    def __init__(self, net: nn.Module, *, mean=None, std=None, layer: str = CLASSIFIER_INPUT,
                 fake_relu_module: str | None = None, input_size: int = 224, arch: str = "", dataset: str = "",
                 in_channels: int = 3) -> None:
        super().__init__()
        self.net = net
        self.has_norm = mean is not None
        c = len(mean) if mean is not None else 1
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0], dtype=torch.float32).view(1, c, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0], dtype=torch.float32).view(1, c, 1, 1),
                             persistent=False)
        self.arch, self.dataset, self.width = arch, dataset, 1.0
        self.input_size = input_size
        modules = dict(net.named_modules())
        probe = torch.rand(2, in_channels, input_size, input_size, generator=torch.Generator().manual_seed(0))
        if layer == CLASSIFIER_INPUT:
            self.layer, self.mode = last_linear(net, self.normalize(probe)), "linear_input"
        elif layer in modules and layer:
            self.layer, self.mode = layer, "module_output"
        else:
            nodes = fx_node_names(net)
            if layer not in nodes:
                near = nearest_names(layer, sorted(set(modules) - {""}) + nodes)
                raise ExternalModelError(f"layer {layer!r} is neither a module of the network nor a torch.fx node; "
                                         f"nearest names: {', '.join(near)}")
            self.layer, self.mode = layer, "fx_node"
            from torchvision.models.feature_extraction import create_feature_extractor

            self._extractor = create_feature_extractor(net, return_nodes={layer: "rep", nodes[-1]: "logits"})
        self.fake_relu_module = fake_relu_module
        if fake_relu_module is not None:
            if fake_relu_module not in modules:
                near = nearest_names(fake_relu_module, [n for n, m in modules.items() if isinstance(m, nn.ReLU)])
                raise ExternalModelError(f"fake_relu: no module {fake_relu_module!r}; ReLU modules nearby: {', '.join(near)}")
            relu = modules[fake_relu_module]
            if not isinstance(relu, nn.ReLU):
                raise ExternalModelError(f"fake_relu: {fake_relu_module!r} is a {type(relu).__name__}, not an nn.ReLU")
            relu.inplace = False  # an in-place ReLU would have overwritten the input FakeReLU needs
            relu.register_forward_hook(self._fake_hook)
        self._fake = False
        self._captured: torch.Tensor | None = None
        if self.mode != "fx_node":
            target = modules[self.layer]
            if self.mode == "linear_input":
                target.register_forward_pre_hook(self._capture_input)
            else:
                target.register_forward_hook(self._capture_output)
        with torch.no_grad():
            logits, rep = self(probe, with_rep=True)
        self.rep_dim, self.num_classes = int(rep.shape[1]), int(logits.shape[1])

    # -- hooks ---------------------------------------------------------------------------
    def _capture_input(self, module, inputs):
        self._captured = inputs[0]

    def _capture_output(self, module, inputs, output):
        self._captured = output

    def _fake_hook(self, module, inputs, output):
        if self._fake:
            return FakeReLU.apply(inputs[0])
        return None

    # -- the study's interface -------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``; the identity when the network normalises inside."""
        return (x - self.mean) / self.std if self.has_norm else x

    def forward(self, x: torch.Tensor, with_rep: bool = False, fake_relu: bool = False, normalize: bool = True):
        """Logits of images ``x`` in [0, 1]; ``(logits, rep)`` when ``with_rep`` is true."""
        h = self.normalize(x) if normalize else x
        self._fake = fake_relu
        try:
            if self.mode == "fx_node":
                out = self._extractor(h)
                logits, rep = out["logits"], out["rep"]
            else:
                self._captured = None
                logits = self.net(h)
                rep = self._captured
        finally:
            self._fake, self._captured = False, None
        rep = _flat(rep)
        return (logits, rep) if with_rep else logits

    def represent(self, x: torch.Tensor, fake_relu: bool = False, normalize: bool = True) -> torch.Tensor:
        """The representation (N, rep_dim) of images ``x`` in [0, 1]."""
        return self(x, with_rep=True, fake_relu=fake_relu, normalize=normalize)[1]

    @property
    def weights_module(self) -> nn.Module:
        return self.net

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, layer={self.layer!r} ({self.mode}), rep_dim={self.rep_dim}, fake_relu={self.fake_relu_module!r}"
