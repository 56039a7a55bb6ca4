r"""SimCLR (Chen et al. 2020, "A simple framework for contrastive learning of
visual representations") for the contrastive regimes of protocol section 4.

* :class:`ProjectionHead` and :class:`SimCLRModel` -- backbone representation
  ``h = f(x)`` (the classifier's penultimate layer) and projection ``z = g(h)``;
* :func:`nt_xent` -- the normalised temperature-scaled cross-entropy loss;
* :class:`LARS` and :func:`warmup_cosine` -- SimCLR's optimiser and schedule;
* :func:`contrastive_adversarial_views` -- the views of the ``simclr-adv`` variant;
* :func:`linear_probe` -- linear evaluation of the frozen backbone.

One training step (see ``iri_alignment.training``)::

    model = SimCLRModel(build_model("shapes", "resnet18", width=0.125), (512, 512, 128))
    opt = LARS(model.parameters(), lr=4.0, weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warm))
    v1, v2 = simclr_view(x, views, gen), simclr_view(x, views, gen)
    loss = nt_xent(model(v1), model(v2), temperature=0.5)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from iri_alignment.attacks import eval_mode, pgd_l2

log = logging.getLogger(__name__)


# -- model -------------------------------------------------------------------------


class ProjectionHead(nn.Module):
    """The SimCLR projection MLP ``g``: Linear - BN - ReLU - ... - Linear.

    ``dims`` lists layer widths as the protocol writes them: for
    ``(512, 512, 128)`` ("512-512-BN-ReLU-128") ``dims[0]`` is the nominal input
    width (ResNet18's 512-d representation) and the head is

        Linear(in_dim, 512, bias=False) - BatchNorm1d(512) - ReLU - Linear(512, 128)

    i.e. the actual input width is always ``in_dim`` (``dims[0]`` is only
    documentation, so width-scaled backbones work), each further entry but the
    last is a hidden Linear - BN - ReLU block (the bias is dropped, BN's shift
    replaces it), and the last entry is the output Linear (with bias, no BN).

    Args:
        in_dim: width of the backbone representation ``h``.
        dims: default ``(512, 512, 128)``; at least two entries.

    Input (N, in_dim); output (N, dims[-1]).
    """

    def __init__(self, in_dim: int, dims: Sequence[int] = (512, 512, 128)) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2:
            raise ValueError(f"head dims need an input and an output width, got {dims}")
        if dims[0] != in_dim:
            log.debug("projection head: nominal input width %d, actual %d", dims[0], in_dim)
        widths = [in_dim, *dims[1:]]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(widths[:-2], widths[1:-1]):
            layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-2], widths[-1]))
        self.net = nn.Sequential(*layers)
        self.out_dim = widths[-1]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class SimCLRModel(nn.Module):
    """A classifier's backbone plus a projection head: images in [0, 1] -> projections ``z``.

    Args:
        backbone_classifier: an ``iri_alignment.models`` classifier (anything with
            ``represent(x) -> (N, rep_dim)`` for images in [0, 1] and ``rep_dim``);
            its ``represent`` gives ``h``. Its final linear layer is not used
            (and gets no gradient) until the linear probe replaces it.
        head_dims: :class:`ProjectionHead` dims, default ``(512, 512, 128)``.

    Attributes:
        backbone: the wrapped classifier (trained in place).
        head: the :class:`ProjectionHead`.
    """

    def __init__(self, backbone_classifier: nn.Module, head_dims: Sequence[int] = (512, 512, 128)) -> None:
        super().__init__()
        self.backbone = backbone_classifier
        self.head = ProjectionHead(backbone_classifier.rep_dim, head_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projections ``z = g(f(x))``, (N, head out_dim), for images ``x`` in [0, 1]."""
        return self.head(self.backbone.represent(x))


# -- loss --------------------------------------------------------------------------


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    r"""NT-Xent, the SimCLR contrastive loss, averaged over both directions.

    Stack the two views' projections into :math:`2N` vectors
    :math:`u_1..u_{2N}` (``z1`` then ``z2``), so that :math:`u_k` and
    :math:`u_{k \pm N}` are a positive pair, and let
    :math:`s_{ij} = u_i^\top u_j / (\|u_i\| \|u_j\|)` be the cosine similarity.
    For anchor :math:`i` with positive :math:`p(i)`,

    .. math::
        \ell_i = -\log \frac{\exp(s_{i,p(i)} / \tau)}
                            {\sum_{j \ne i} \exp(s_{ij} / \tau)},
        \qquad \mathcal L = \frac{1}{2N} \sum_{i=1}^{2N} \ell_i,

    the denominator running over the positive and the :math:`2N - 2`
    negatives (every other image of both views). Averaging over all
    :math:`2N` anchors counts each pair in both directions, (z1 -> z2) and
    (z2 -> z1). E.g. identical pairs with mutually orthogonal negatives give
    :math:`\log(1 + (2N - 2) e^{-1/\tau})`.

    Args:
        z1, z2: projections of the two views, (N, d), N >= 2; row k of each
            comes from the same image.
        temperature: :math:`\tau` > 0 (default 0.5, the protocol's).

    Returns:
        Scalar loss (differentiable).
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (N, d), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    u = F.normalize(torch.cat((z1, z2)), dim=1)
    logits = u @ u.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = torch.cat((torch.arange(n, 2 * n), torch.arange(0, n))).to(u.device)
    return F.cross_entropy(logits, positive)


# -- optimisation ------------------------------------------------------------------


class LARS(torch.optim.Optimizer):
    r"""Layer-wise adaptive rate scaling (You et al. 2017), as in SimCLR's code.

    For each parameter tensor :math:`w` with gradient :math:`g`, learning rate
    :math:`\eta` (the group's current ``lr``), weight decay :math:`\lambda`,
    momentum :math:`m` and trust coefficient :math:`\kappa`:

    .. math::
        d &= g + \lambda w, \\
        r &= \kappa \, \frac{\|w\|_2}{\|d\|_2} \quad (r = 1 \text{ if } \|w\|_2 = 0 \text{ or } \|d\|_2 = 0), \\
        v &\leftarrow m v + \eta \, r \, d, \qquad w \leftarrow w - v.

    With ``exclude_bias_and_bn`` (default) every tensor with ``ndim <= 1``
    (biases, BatchNorm weights and shifts) gets neither weight decay nor
    adaptation: :math:`d = g`, :math:`r = 1`, i.e. plain SGD with momentum.
    The learning rate sits inside the momentum buffer (SimCLR's TensorFlow
    LARS); with a constant lr this equals ``torch.optim.SGD``'s
    :math:`v \leftarrow m v + d, \; w \leftarrow w - \eta v`.

    Args:
        params: parameters or parameter groups.
        lr: base learning rate (SimCLR: 0.3 x batch / 256; protocol: 4.0 for batch 1024).
        weight_decay: :math:`\lambda` (default 0; protocol 1e-6).
        momentum: :math:`m` (default 0.9).
        trust_coefficient: :math:`\kappa` (default 0.001).
        exclude_bias_and_bn: skip decay and adaptation for ``ndim <= 1`` tensors (default True).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
        exclude_bias_and_bn: bool = True,
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(f"invalid LARS settings: lr={lr}, weight_decay={weight_decay}, "
                             f"momentum={momentum}, trust_coefficient={trust_coefficient}")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                    "trust_coefficient": trust_coefficient, "exclude_bias_and_bn": exclude_bias_and_bn}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                d = w.grad
                if not (group["exclude_bias_and_bn"] and w.ndim <= 1):
                    if group["weight_decay"]:
                        d = d.add(w, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(d)
                    ratio = torch.where((w_norm > 0) & (d_norm > 0),
                                        group["trust_coefficient"] * w_norm / d_norm, torch.ones_like(w_norm))
                    d = d * ratio
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(w)
                v = state["momentum_buffer"]
                v.mul_(group["momentum"]).add_(d, alpha=group["lr"])
                w.sub_(v)
        return loss


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    r"""Learning-rate multiplier: linear warm-up, then cosine decay to 0 (for ``LambdaLR``).

    .. math::
        \mu(t) = \begin{cases}
            (t + 1) / W & t < W \\
            \tfrac12 \big(1 + \cos(\pi \, (t - W) / (T - W))\big) & W \le t < T \\
            0 & t \ge T
        \end{cases}

    with :math:`t` = ``step`` (0-based, the number of scheduler steps taken),
    :math:`T` = ``total_steps``, :math:`W` = ``warmup_steps``. Warm-up reaches
    1 at its last step and the cosine starts from 1 at step :math:`W`.
    (SimCLR's code warms up as :math:`t / W`, so its first update has lr 0;
    here the first update already moves.)
    """
    if total_steps <= 0 or warmup_steps < 0:
        raise ValueError(f"need total_steps > 0 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return 0.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# -- simclr-adv ----------------------------------------------------------------------


def projection_distance(z: torch.Tensor, z_ref: torch.Tensor) -> torch.Tensor:
    r"""Cosine distance :math:`1 - z^\top z_{ref} / (\|z\| \|z_{ref}\|)` per row, (N,), in [0, 2].

    The geometry NT-Xent sees: it compares projections only through their directions.
    """
    return 1.0 - F.cosine_similarity(z, z_ref, dim=1)


def contrastive_adversarial_views(
    simclr_model: nn.Module,
    view1: torch.Tensor,
    view2: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Adversarial views of the ``simclr-adv`` variant: each view is replaced by
    the l2 PGD adversary that pushes its projection away from its clean projection.

    For each view :math:`v` (both views in one batch) with clean projection
    :math:`z = g(f(v))` held fixed,

    .. math::
        v^* \approx \arg\max_{\|v' - v\|_2 \le \varepsilon,\; v' \in [0,1]}
                    \Big(1 - \cos\big(g(f(v')), z\big)\Big),

    found by :func:`iri_alignment.attacks.pgd_l2` (``steps`` normalised steps
    of l2 length ``step_size``, projection onto the ball, clipping to [0, 1]).

    Random start (always on): the distance is minimal, so its gradient is
    exactly zero, at :math:`v' = v`; from the clean view PGD would never
    move. PGD therefore starts at a uniform point of the ball (``pgd_l2``'s
    ``random_start``), drawn from ``generator``. (The protocol's
    ``random_start: false`` cannot apply to this loss.)

    The attack runs with the model in eval mode (BatchNorm uses its running
    statistics, which the adversaries do not update; every submodule's mode is
    restored afterwards); gradients are taken with respect to the inputs only.

    Args:
        simclr_model: images in [0, 1] -> projections (a :class:`SimCLRModel`).
        view1, view2: the two clean views, float (N, 3, H, W) in [0, 1].
        eps: l2 radius per image (protocol 1.0).
        steps: PGD steps (protocol 5).
        step_size: l2 length of each step (protocol 0.5).
        generator: CPU ``torch.Generator`` for the random start (default: global RNG).

    Returns:
        ``(view1_adv, view2_adv)``, detached, same shapes, within ``eps`` of the
        clean views and in [0, 1].
    """
    n = view1.shape[0]
    views = torch.cat((view1, view2)).detach()
    with eval_mode(simclr_model):
        with torch.no_grad():
            z_clean = simclr_model(views)
        adv = pgd_l2(simclr_model, views, z_clean, eps=eps, steps=steps, step_size=step_size,
                     random_start=True, loss_fn=projection_distance, generator=generator)
    return adv[:n], adv[n:]


# -- linear evaluation -----------------------------------------------------------------


def _as_images(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A batch on ``device`` as float in [0, 1] (uint8 images are divided by 255)."""
    x = x.to(device)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def _features(model: nn.Module, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """``model.represent`` of every image, in batches, on ``device``."""
    return torch.cat([model.represent(_as_images(images[i:i + batch_size], device))
                      for i in range(0, len(images), batch_size)])


def linear_probe(
    backbone_classifier: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
    device: torch.device | str,
    standardize: bool = True,
) -> dict:
    r"""Linear evaluation: a softmax classifier on the frozen backbone's representation.

    The backbone runs once, in eval mode and without gradients, over both
    splits (its previous train/eval mode is restored afterwards); the features
    ``h`` stay on ``device``. A linear layer :math:`Wh + b`, initialised at zero
    (the problem is convex), is trained on the training features with
    cross-entropy, SGD (momentum 0.9, ``weight_decay``) and a cosine learning
    rate per step, :math:`\eta_t = \eta \cdot \tfrac12 (1 + \cos(\pi t / T))`
    (:func:`warmup_cosine` without warm-up), over shuffled mini-batches.
    No augmentation. Decision: the test accuracy is that of the *last* epoch
    (no model selection on the test set).

    Decision (``standardize``, default on): the layer is fitted to standardised
    features :math:`z = (h - \mu) / \sigma`, with the training features' mean and
    standard deviation per dimension (as MAE's BatchNorm without affine before
    its linear probe), and then folded back, :math:`W' = W / \sigma`,
    :math:`b' = b - W' \mu`: still one linear layer on :math:`h`, but the fit no
    longer depends on the features' scale, which a fixed learning rate and
    epoch count otherwise under-fit (measured on the embedded SimCLR ResNet18:
    20 epochs gave 59.8% test accuracy raw, 64.2% standardised, 66.6% for the
    exact optimum).

    Args:
        backbone_classifier: ``represent(x) -> (N, rep_dim)`` for images in
            [0, 1], already on ``device``; ``num_classes`` is read from it when
            present, else ``max(label) + 1``.
        train_images, test_images: (N, 3, H, W), float in [0, 1] or uint8; any device.
        train_labels, test_labels: int64 (N,).
        epochs: passes over the training features (protocol 100).
        batch_size: mini-batch size for features and for SGD (protocol 256).
        lr: peak learning rate (protocol 0.1).
        weight_decay: SGD weight decay (protocol 0).
        generator: CPU ``torch.Generator`` for the mini-batch order.
        device: where features and the linear layer live.
        standardize: fit on standardised features (default True; see above).

    Returns:
        ``{"test_acc", "train_acc"}`` as fractions (train accuracy of the final
        layer on all training features), and ``"weight"`` (classes, rep_dim),
        ``"bias"`` (classes,): the fitted layer, on the CPU, ready to become the
        classifier's final linear layer.
    """
    with eval_mode(backbone_classifier):
        h_train = _features(backbone_classifier, train_images, batch_size, device)
        h_test = _features(backbone_classifier, test_images, batch_size, device)
    y_train, y_test = train_labels.to(device), test_labels.to(device)
    classes = int(getattr(backbone_classifier, "num_classes", int(y_train.max()) + 1))
    mean = h_train.mean(0) if standardize else torch.zeros_like(h_train[0])
    std = h_train.std(0) if standardize else torch.ones_like(h_train[0])
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant (e.g. dead) dimensions stay as they are
    h_train, h_test = (h_train - mean) / std, (h_test - mean) / std

    probe = nn.Linear(h_train.shape[1], classes).to(device)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(h_train) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: warmup_cosine(t, total, 0))
    for epoch in range(epochs):
        order = torch.randperm(len(h_train), generator=generator).to(device)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(probe(h_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        log.debug("linear probe epoch %d/%d: last batch loss %.4f", epoch + 1, epochs, loss.item())

    with torch.no_grad():
        train_acc = (probe(h_train).argmax(1) == y_train).float().mean().item()
        test_acc = (probe(h_test).argmax(1) == y_test).float().mean().item()
    log.info("linear probe: train acc %.4f, test acc %.4f", train_acc, test_acc)
    with torch.no_grad():  # fold the standardisation into the layer: W' h + b' = W z + b
        weight = probe.weight / std
        bias = probe.bias - weight @ mean
    return {"test_acc": test_acc, "train_acc": train_acc, "weight": weight.detach().cpu(), "bias": bias.detach().cpu()}
