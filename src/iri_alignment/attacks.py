r"""l2 adversaries and the robust-training losses built on them (protocol section 4).

Everything here works on images in [0, 1] (N, C, H, W) and on a ``model`` that
maps such images to an output (logits for a classifier; the model normalises
inside). All norms are per example, over all of C x H x W:
:math:`\|v\|_2 = (\sum_{c,h,w} v_{chw}^2)^{1/2}`.

* :func:`pgd_l2` -- projected gradient ascent on a loss in the l2 ball
  (Madry et al. 2018), with a custom loss hook as in MadryLab's ``robustness``
  library; used for adversarial training, robust evaluation and (with a loss
  on projections) SimCLR-adv.
* :func:`trades_loss` -- TRADES (Zhang et al. 2019), l2 version.
* :func:`mart_loss` -- MART (Wang et al. 2020), l2 version.
* :func:`robust_accuracy` -- clean and l2-PGD accuracy of a classifier.
* :func:`step_size_for` -- the protocol's step-size rule ``2.5 * eps / steps``.

Train/eval mode: :func:`pgd_l2` runs the model in whatever mode it is in (the
caller chooses; adversarial training attacks in eval mode so that adversaries
do not enter the BatchNorm statistics). :func:`trades_loss` and
:func:`mart_loss` run their inner maximisation in eval mode and the outer loss
in the caller's mode, as the reference implementations do;
:func:`robust_accuracy` evaluates in eval mode. Every function restores the
mode of every submodule it changed. Gradients are taken with
``torch.autograd.grad`` with respect to the input only, so attacks never leave
``.grad`` on model parameters.

Randomness (random starts) is drawn from the given ``torch.Generator`` on the
CPU and then moved to the device of the images, so a CPU generator makes runs
reproducible on any device.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "eval_mode",
    "mart_loss",
    "pgd_l2",
    "project_l2",
    "robust_accuracy",
    "sample_l2_ball",
    "step_size_for",
    "trades_loss",
]

log = logging.getLogger(__name__)

#: Added to gradient norms before dividing by them (as ``robustness`` and
#: ``torchattacks`` do): a zero gradient then gives a zero step, not NaN.
GRAD_NORM_EPS = 1e-10

#: Standard deviation of the Gaussian start of the TRADES and MART adversaries.
TRADES_START_STD = 0.001

LossFn = Callable[[torch.Tensor, object], torch.Tensor]


# -- helpers -----------------------------------------------------------------------


def step_size_for(eps: float, steps: int, factor: float = 2.5) -> float:
    """The protocol's PGD step size: ``factor * eps / steps``.

    With the default factor 2.5 the attack can travel 2.5 radii in total, so it
    reaches the boundary of the ball and can still move along it (Madry et al.).

    Args:
        eps: l2 radius (>= 0).
        steps: number of PGD steps (>= 1).
        factor: total path length in units of ``eps`` (default 2.5).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return factor * eps / steps


def _norms(v: torch.Tensor) -> torch.Tensor:
    """Per-example l2 norms of a batch, shaped (N, 1, ..., 1) to broadcast against it."""
    return v.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (v.dim() - 1)))


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    r"""Project each example of ``delta`` onto the l2 ball of radius ``eps``.

    .. math:: \Pi_\varepsilon(\delta) = \delta \cdot \min\left(1, \frac{\varepsilon}{\|\delta\|_2}\right)

    (examples inside the ball are unchanged; a zero ``delta`` stays zero).
    """
    return delta * torch.clamp(eps / _norms(delta).clamp_min(1e-12), max=1.0)


def sample_l2_ball(like: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Per example, a point drawn uniformly from the l2 ball of radius ``eps``.

    With :math:`d` the number of elements of one example,

    .. math:: \delta = \varepsilon \, U^{1/d} \, \frac{z}{\|z\|_2}, \qquad
              z \sim \mathcal N(0, I_d), \; U \sim \mathcal U[0, 1],

    a uniform direction times a radius whose CDF is :math:`(r/\varepsilon)^d`,
    the volume fraction of the ball of radius :math:`r`. (``torchattacks``
    draws the radius as :math:`\varepsilon U`, which is not uniform in the ball.)

    Args:
        like: a batch (N, ...); the result has its shape, dtype and device.
        eps: radius (>= 0).
        generator: CPU ``torch.Generator`` for the draw (default: torch's global RNG).
    """
    n, d = like.shape[0], like[0].numel()
    z = torch.randn(like.shape, generator=generator)
    u = torch.rand(n, generator=generator).view(-1, *([1] * (like.dim() - 1)))
    delta = eps * u.pow(1.0 / d) * z / _norms(z).clamp_min(1e-12)
    return delta.to(device=like.device, dtype=like.dtype)


def _gaussian_start(x: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """``std * N(0, 1)`` of the shape of ``x``, drawn on the CPU, on x's device."""
    return (std * torch.randn(x.shape, generator=generator)).to(device=x.device, dtype=x.dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block; afterwards restore the
    train/eval flag of every submodule as it was (not just the top one, so a
    model with e.g. frozen BatchNorm layers in a training model comes back intact)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _check_images(x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"images must be a float tensor in [0, 1], got dtype {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"images must lie in [0, 1], got range [{x.min().item():.4g}, {x.max().item():.4g}]")


def _cross_entropy(output: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Default attack loss: per-example cross-entropy of logits ``output`` at labels ``y``."""
    if y is None:
        raise ValueError("the default cross-entropy loss needs labels y; pass y or a loss_fn")
    return F.cross_entropy(output, y, reduction="none")


# -- PGD ---------------------------------------------------------------------------


def l2_ascent(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor | None,
    delta: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    loss_fn: LossFn,
) -> torch.Tensor:
    """The PGD iteration of :func:`pgd_l2` from a given start ``x + delta``
    (``delta`` already in the ball and ``x + delta`` in [0, 1]); returns the
    detached adversarial batch. Calling it one step at a time lets a caller
    keep the best iterate (:mod:`iri_alignment.features.nonrobust`)."""
    x = x.detach()
    x_adv = (x + delta).detach()
    with torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), y)
            if loss.shape != (len(x),):
                raise ValueError(f"loss_fn must return a per-example loss of shape ({len(x)},), "
                                 f"got {tuple(loss.shape)}")
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            x_adv = x_adv.detach() + step_size * grad / (_norms(grad) + GRAD_NORM_EPS)
            x_adv = torch.clamp(x + project_l2(x_adv - x, eps), 0.0, 1.0).detach()
    return x_adv


def pgd_l2(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = False,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""l2 projected gradient ascent (Madry et al. 2018): a batch of adversaries
    that *maximise* ``loss_fn`` within distance ``eps`` of ``x``.

    With :math:`L(x') = \sum_i \ell(f(x'), y)_i` the summed per-example loss,
    :math:`\Pi_\varepsilon` the per-example projection onto the l2 ball (see
    :func:`project_l2`) and :math:`\alpha` the step size, starting from
    :math:`x^0 = x` (or :math:`\mathrm{clip}_{[0,1]}(x + \delta_0)`, :math:`\delta_0`
    uniform in the ball, when ``random_start``), each of the ``steps`` steps is

    .. math::
        g &= \nabla_{x'} L(x^t), \qquad
        \tilde x = x^t + \alpha \, \frac{g}{\|g\|_2 + 10^{-10}} \quad\text{(per example)},\\
        x^{t+1} &= \mathrm{clip}_{[0,1]}\big(x + \Pi_\varepsilon(\tilde x - x)\big).

    Per-example normalisation makes each example's step independent of the
    others' losses (as long as the model treats examples independently, e.g.
    BatchNorm in eval mode). Clipping after the projection keeps
    :math:`\|x^{t+1} - x\|_2 \le \varepsilon`, since clipping to [0, 1] only
    moves a coordinate towards :math:`x \in [0,1]`. This is the step of MadryLab's
    ``robustness`` ``L2Step`` and of ``torchattacks.PGDL2``.

    Args:
        model: callable mapping images in [0, 1] (N, C, H, W) to an output
            (logits by default). Its train/eval mode is left as it is; choose
            it before calling.
        x: clean images, float in [0, 1], (N, C, H, W).
        y: target of the loss: int labels (N,) for the default loss; anything
            ``loss_fn`` accepts (default None: only with a custom ``loss_fn``).
        eps: l2 radius of the perturbation, per example (>= 0).
        steps: number of ascent steps (>= 0; 0 returns the start).
        step_size: :math:`\alpha`, the l2 length of each step (see :func:`step_size_for`).
        random_start: start from a uniform point of the ball instead of ``x``
            (default False, as the protocol's training and evaluation).
        loss_fn: ``loss_fn(output, y) -> (N,)`` per-example loss to maximise
            (default: cross-entropy with ``reduction="none"``). E.g. SimCLR-adv
            passes a distance between projections with ``y=None``.
        generator: CPU ``torch.Generator`` for the random start (default: the
            global RNG; unused without ``random_start``).

    Returns:
        The adversarial batch, detached, same shape, dtype and device as ``x``,
        in [0, 1] and within ``eps`` of ``x`` per example.
    """
    if eps < 0 or steps < 0:
        raise ValueError(f"eps and steps must be >= 0, got eps={eps}, steps={steps}")
    _check_images(x)
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start:
        delta = torch.clamp(x + sample_l2_ball(x, eps, generator), 0.0, 1.0) - x
    return l2_ascent(model, x, y, delta, eps=eps, steps=steps, step_size=step_size,
                      loss_fn=loss_fn or _cross_entropy)


# -- robust training losses --------------------------------------------------------------


def _kl_per_example(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(p \| q)_i = \sum_k p_{ik} (\log p_{ik} - \log q_{ik})` from log-probabilities, shape (N,)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


def _start_near(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """The TRADES/MART start: ``x + 0.001 * N(0, 1)``, clipped to [0, 1] and
    projected into the ball; returned as the offset from ``x``."""
    return project_l2(torch.clamp(x + _gaussian_start(x, TRADES_START_STD, generator), 0.0, 1.0) - x, eps)


def trades_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    beta: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""TRADES loss, l2 version (Zhang et al. 2019, "Theoretically principled
    trade-off between robustness and accuracy").

    With :math:`p(x) = \mathrm{softmax} f(x)`:

    *Inner maximisation* (model in eval mode): :func:`pgd_l2`'s iteration on

    .. math:: x^* \approx \arg\max_{\|x' - x\|_2 \le \varepsilon}
              \mathrm{KL}\big(p(x) \,\|\, p(x')\big),

    with :math:`p(x)` held fixed, starting from :math:`x + 0.001\,\mathcal N(0, I)`
    (at :math:`x' = x` the KL has zero gradient, hence the small random start).

    *Outer loss* (model in the caller's mode; gradients flow through both terms):

    .. math:: \mathcal L = \frac1N \sum_i \mathrm{CE}(f(x_i), y_i)
              + \beta \, \frac1N \sum_i \mathrm{KL}\big(p(x_i) \,\|\, p(x^*_i)\big).

    Differences from the reference code (``trades.py``): the step is ``step_size``
    (the reference hard-codes :math:`2\varepsilon/\text{steps}`), the start is
    clipped to [0, 1], and each step projects then clips (the reference clips
    then projects); a zero gradient gives a zero step instead of a random one.

    Args:
        model: classifier, images in [0, 1] -> logits.
        x: clean images, float in [0, 1], (N, C, H, W).
        y: int labels (N,).
        eps: l2 radius of the adversary.
        steps: inner PGD steps; step_size: their l2 length.
        beta: weight of the robustness (KL) term (>= 0; 0 gives plain CE).
        generator: CPU ``torch.Generator`` for the Gaussian start (default: global RNG).

    Returns:
        The scalar loss, differentiable with respect to the model parameters.
    """
    _check_images(x)
    x = x.detach()
    with eval_mode(model):
        with torch.no_grad():
            log_p_clean = F.log_softmax(model(x), dim=1)
        x_adv = l2_ascent(
            model, x, log_p_clean, _start_near(x, eps, generator), eps=eps, steps=steps, step_size=step_size,
            loss_fn=lambda out, log_p: _kl_per_example(log_p, F.log_softmax(out, dim=1)),
        )
    logits = model(x)
    log_p, log_q = F.log_softmax(logits, dim=1), F.log_softmax(model(x_adv), dim=1)
    return F.cross_entropy(logits, y) + beta * _kl_per_example(log_p, log_q).mean()


def mart_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    beta: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""MART loss, l2 version (Wang et al. 2020, "Improving adversarial
    robustness requires revisiting misclassified examples").

    With :math:`p(x) = \mathrm{softmax} f(x)`:

    *Inner maximisation* (model in eval mode): :func:`pgd_l2`'s iteration on the
    cross-entropy :math:`\mathrm{CE}(f(x'), y)`, from :math:`x + 0.001\,\mathcal N(0, I)`
    as in the reference code, giving :math:`x^*`.

    *Outer loss* (model in the caller's mode), with
    :math:`\hat y_i = \arg\max_{k \ne y_i} p_k(x^*_i)` the most likely wrong class:

    .. math::
        \mathcal L = \frac1N \sum_i \Big[
            \underbrace{\mathrm{CE}(f(x^*_i), y_i)
                         - \log\big(1.0001 - p_{\hat y_i}(x^*_i)\big)}_{\text{boosted CE (BCE)}}
            + \beta \, \mathrm{KL}\big(p(x_i) \,\|\, p(x^*_i)\big) \, \big(1 - p_{y_i}(x_i)\big) \Big],

    where the KL is summed over classes; the factor :math:`1 - p_{y}(x)` weights
    examples the model gets wrong on clean data more. The constant 1.0001 is the
    reference code's guard against :math:`\log 0`. Gradients flow through every
    term, including the weight, as in the reference.

    The reference code (``mart.py``) attacks only in l_inf: its l2 branch
    returns the noisy start unchanged. Here the l2 adversary is a real PGD
    (the start clipped to [0, 1] and projected into the ball, then
    :func:`pgd_l2`'s steps).

    Args:
        model: classifier, images in [0, 1] -> logits.
        x: clean images, float in [0, 1], (N, C, H, W).
        y: int labels (N,).
        eps: l2 radius of the adversary.
        steps: inner PGD steps; step_size: their l2 length.
        beta: weight of the KL term (>= 0).
        generator: CPU ``torch.Generator`` for the Gaussian start (default: global RNG).

    Returns:
        The scalar loss, differentiable with respect to the model parameters.
    """
    _check_images(x)
    x = x.detach()
    with eval_mode(model):
        x_adv = l2_ascent(model, x, y, _start_near(x, eps, generator), eps=eps, steps=steps,
                           step_size=step_size, loss_fn=_cross_entropy)
    logits, logits_adv = model(x), model(x_adv)
    log_p, log_q = F.log_softmax(logits, dim=1), F.log_softmax(logits_adv, dim=1)
    q = log_q.exp()
    wrong = q.scatter(1, y.unsqueeze(1), -1.0).argmax(dim=1)  # most likely class other than y
    bce = F.cross_entropy(logits_adv, y) - torch.log(1.0001 - q.gather(1, wrong.unsqueeze(1)).squeeze(1)).mean()
    p_true = log_p.exp().gather(1, y.unsqueeze(1)).squeeze(1)
    return bce + beta * (_kl_per_example(log_p, log_q) * (1.0 - p_true)).mean()


# -- evaluation ----------------------------------------------------------------------


def robust_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    batch_size: int = 256,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> dict:
    """Clean accuracy and accuracy under :func:`pgd_l2` (cross-entropy, no
    target) of a classifier, in eval mode (the previous mode is restored).

    An example counts as robust when the model classifies its adversary
    correctly. Batches are moved to the device of the model's parameters (the
    device of ``images`` for a model without parameters), so a large CPU test
    set can be evaluated on a GPU model.

    Args:
        model: classifier, images in [0, 1] -> logits.
        images: float images in [0, 1], (N, 3, H, W).
        labels: int labels (N,).
        eps, steps, step_size, random_start, generator: as in :func:`pgd_l2`
            (default: no random start).
        batch_size: examples per attack batch (default 256).
        progress: show a tqdm progress bar over batches (default False).

    Returns:
        ``{"clean_acc", "robust_acc"}`` as fractions in [0, 1], and ``"n"``,
        the number of examples.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (and at least one), got {len(images)} and {len(labels)}")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else images.device
    clean = robust = 0
    starts = range(0, len(images), batch_size)
    with eval_mode(model):
        for start in tqdm(starts, desc=f"l2 PGD eps={eps:g}", leave=False, disable=not progress):
            x = images[start:start + batch_size].to(device)
            y = labels[start:start + batch_size].to(device)
            x_adv = pgd_l2(model, x, y, eps=eps, steps=steps, step_size=step_size,
                           random_start=random_start, generator=generator)
            with torch.no_grad():
                clean += (model(x).argmax(dim=1) == y).sum().item()
                robust += (model(x_adv).argmax(dim=1) == y).sum().item()
    result = {"clean_acc": clean / len(images), "robust_acc": robust / len(images), "n": len(images)}
    log.debug("robust accuracy at l2 eps=%g, %d steps of %g: %s", eps, steps, step_size, result)
    return result
