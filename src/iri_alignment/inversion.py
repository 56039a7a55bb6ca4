r"""Representation inversion: turn a seed image into IRIs of a batch of targets (protocol 5).

For targets ``x`` (N, C, H, W) in [0, 1], a shared seed ``x0`` and an
:class:`~iri_alignment.regularizers.Objective` ``L``, :func:`invert` runs the
protocol's optimiser on all N images at once:

.. math::  x'_0 = x_0, \qquad
           x'_{t+1} = \mathrm{clamp}\big(x'_t - \eta\, g_t / \lVert g_t \rVert_2,\ 0,\ 1\big), \qquad
           g_t = \nabla_{x'} L_n(x'_t)

with the gradient of each image's own loss ``L_n`` normalised per image
(every image moves by exactly ``eta`` before clamping), ``eta = step_size``
(protocol 1.0), and returns, per image, the iterate with the lowest
representation loss ``rep`` seen over ``t = 0..iterations`` (the best iterate).

Example::

    model = build_model("shapes", "resnet18", width=0.25)
    seed = make_seed("noise", (3, 32, 32), seed=0)
    objective = make_objective("human-aligned", params["inversion"]["human_aligned"])
    result = invert(model, targets, seed, objective, iterations=5000)
    result.images, result.rep_loss        # (N, 3, 32, 32), (N,)

Runs are deterministic given the seed and ``generator``, and resumable: every
``checkpoint_every`` iterations ``on_checkpoint(state)`` receives a dict of
plain tensors and numbers; ``invert(..., state=state)`` continues from it and,
on the CPU, ends bitwise-identical to an uninterrupted run. A ``fourier``
objective makes the variable the image's scaled spectrum (:class:`FourierBasis`)
instead of its pixels; the step is the same normalised step, in that basis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from iri_alignment.devices import autocast
from iri_alignment.regularizers import ModelRep, Objective

log = logging.getLogger(__name__)

SEED_KINDS = ("noise", "light-noise", "white", "black")
RANDOM_SEED_KINDS = ("noise", "light-noise")  # the others are the same image for every seed number
#: the Fourier basis represents pixels as sigmoid(z); seeds are clamped to
#: [FOURIER_EPS, 1 - FOURIER_EPS] so that z = logit(seed) stays finite
FOURIER_EPS = 1e-2


# -- seeds -------------------------------------------------------------------------------


def make_seed(kind: str, shape: Sequence[int], seed: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The seed image every target's IRI starts from (shared by the batch).

    ==============  =====================================================
    ``noise``       clamp(z, 0, 1), z ~ N(0, 1) per pixel (protocol 5)
    ``light-noise`` clamp(0.5 + 0.1 z, 0, 1): faint noise around mid-grey (choice)
    ``white``       all ones
    ``black``       all zeros
    ==============  =====================================================

    Args:
        kind: one of :data:`SEED_KINDS`.
        shape: (C, H, W), or (1, C, H, W).
        seed: integer seed of the ``torch.Generator`` (CPU) drawing the noise;
            the same seed gives the same image on every device.
        device: where the image is returned (default None: CPU).

    Returns:
        (1, C, H, W) float32 tensor in [0, 1].
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"seed shape must be (C, H, W), got {shape}")
    generator = torch.Generator().manual_seed(int(seed))
    if kind == "noise":
        image = torch.randn(shape, generator=generator).clamp(0, 1)
    elif kind == "light-noise":
        image = (0.5 + 0.1 * torch.randn(shape, generator=generator)).clamp(0, 1)
    elif kind == "white":
        image = torch.ones(shape)
    elif kind == "black":
        image = torch.zeros(shape)
    else:
        raise ValueError(f"unknown seed kind {kind!r}: choose one of {', '.join(SEED_KINDS)}")
    return image.unsqueeze(0).to(device)


# -- the variable the optimiser steps in ------------------------------------------------------


def _per_image_norm(t: torch.Tensor) -> torch.Tensor:
    """l2 norm of each sample of a batch, shaped to broadcast against it."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).view(-1, *([1] * (t.dim() - 1)))


class PixelBasis:
    """The protocol's variable: the pixels themselves.

    ``encode(x) = x``, ``decode(v) = v``; a step is the projected normalised
    gradient step ``v <- clamp(v - eta g / ||g||_2, 0, 1)`` (per image; an
    image whose gradient is zero does not move).
    """

    name = "pixel"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()

    def decode(self, variable: torch.Tensor) -> torch.Tensor:
        return variable

    def step(self, variable: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return (variable - step_size * grad / _per_image_norm(grad).clamp_min(1e-30)).clamp(0, 1)


class FourierBasis:
    r"""Optimise an image's 2-D real Fourier coefficients, scaled by 1 / f^decay.

    .. math::  x = \sigma\big(\mathrm{irfft2}(s \odot c)\big), \qquad
               s_{uv} = \max(f_{uv} \cdot \max(H, W),\ 1)^{-\mathrm{decay}}

    ``c`` holds the real and imaginary parts of the rfft2 coefficients
    (``norm="ortho"``), shape (N, C, H, W // 2 + 1, 2); ``f_uv`` is the
    frequency in cycles per pixel, so the DC term and the lowest harmonic have
    scale 1 and finer ones shrink (Lucid's ``fft_image`` preconditioning).
    The sigmoid keeps pixels in (0, 1) without clamping, whose zero gradient
    would strand coefficients (choice); a seed is encoded as
    ``c = rfft2(logit(clamp(x0, eps, 1 - eps))) / s`` with eps = :data:`FOURIER_EPS`.
    A step is ``c <- c - eta g / ||g||_2`` per image, in coefficient space.
    """

    name = "fourier"

    def __init__(self, height: int, width: int, decay: float, *, device=None, dtype=torch.float32) -> None:
        fy = torch.fft.fftfreq(height, device=device, dtype=dtype).view(-1, 1)
        fx = torch.fft.rfftfreq(width, device=device, dtype=dtype).view(1, -1)
        cycles = torch.sqrt(fy**2 + fx**2) * max(height, width)
        self.scale = cycles.clamp_min(1.0).pow(-decay)  # (H, W // 2 + 1)
        self.size = (height, width)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.logit(images.clamp(FOURIER_EPS, 1 - FOURIER_EPS))
        return torch.view_as_real(torch.fft.rfft2(logits, norm="ortho") / self.scale).contiguous()

    def decode(self, variable: torch.Tensor) -> torch.Tensor:
        spectrum = torch.view_as_complex(variable) * self.scale
        return torch.sigmoid(torch.fft.irfft2(spectrum, s=self.size, norm="ortho"))

    def step(self, variable: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return variable - step_size * grad / _per_image_norm(grad).clamp_min(1e-30)


def make_basis(objective: Objective, images: torch.Tensor) -> PixelBasis | FourierBasis:
    """The variable ``objective.basis`` asks for, sized for ``images`` (N, C, H, W)."""
    if objective.basis == "pixel":
        return PixelBasis()
    if objective.basis == "fourier":
        return FourierBasis(*images.shape[-2:], objective.decay, device=images.device, dtype=images.dtype)
    raise ValueError(f"unknown basis {objective.basis!r}: choose pixel or fourier")


# -- inversion ------------------------------------------------------------------------------


def representation_fn(model: nn.Module, fake_relu: bool = True, precision: str = "fp32",
                      compile_mode: str | None = None) -> ModelRep:
    """``model_rep(x, normalize=True)``: ``model.represent`` with the fake-ReLU choice bound.

    ``normalize=False`` is forwarded as ``model.represent(x, fake_relu=..., normalize=False)``
    (only the faithful adversarial regularizer asks for it). ``precision``
    (``fp32`` default, or ``bf16``) is the autocast the model's forward pass runs
    under (:func:`iri_alignment.devices.autocast`); the representation is
    returned in fp32 either way, so the objective's other terms stay fp32.
    ``compile_mode`` (default None: eager) runs ``model.represent`` through
    ``torch.compile(mode=compile_mode)`` (:func:`iri_alignment.devices.compile_mode`:
    ``reduce-overhead``, i.e. CUDA graphs, on a GPU).
    """
    represent = torch.compile(model.represent, mode=compile_mode) if compile_mode else model.represent

    def model_rep(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        with autocast(x.device, precision):
            rep = represent(x, fake_relu=fake_relu) if normalize else represent(x, fake_relu=fake_relu, normalize=False)
        return rep.float()

    return model_rep


def representation_distances(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    normalize: bool = True,
    fake_relu: bool = True,
    batch_size: int = 100,
) -> torch.Tensor:
    r"""The rep loss of every image against every target's representation.

    .. math::  D_{ij} = \lVert g(x'_i) - g(x_j) \rVert_2 \,/\, \max(\lVert g(x_j) \rVert_2, 10^{-12})

    the normalised distance of :func:`iri_alignment.regularizers.rep_loss`, so
    that ``D[i, i]`` is image i's rep loss against its own target and the other
    entries of row i are its distances to the other targets (protocol 9, the
    inversion's own null).

    Args:
        model: a classifier with ``represent(x, fake_relu=..., normalize=...)``;
            it runs in eval mode (its previous mode is restored), without gradient.
        images: (N, C, H, W) in [0, 1], e.g. an IRI set's IRIs.
        targets: (M, C, H, W) in [0, 1]; moved to the device of ``images``.
        normalize: whether the model sees dataset-normalised inputs (default
            True; pass the objective's ``normalize`` so that the distances are
            those of its rep loss).
        fake_relu: passed to ``model.represent`` (default True; it changes
            gradients only, not values).
        batch_size: images per forward pass (default 100).

    Returns:
        (N, M) float tensor on the device of ``images``.
    """
    model_rep = representation_fn(model, fake_relu)

    def represent(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model_rep(x[k:k + batch_size], normalize=normalize) for k in range(0, len(x), batch_size)])

    targets = targets.to(device=images.device, dtype=images.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image_rep, target_rep = represent(images), represent(targets)
            target_norm = torch.linalg.vector_norm(target_rep, dim=1).clamp_min(1e-12)
            # row by row, as rep_loss computes it (a difference, then its norm)
            rows = [torch.linalg.vector_norm(rep - target_rep, dim=1) / target_norm for rep in image_rep]
    finally:
        model.train(was_training)
    return torch.stack(rows)


@dataclass
class InversionResult:
    """What :func:`invert` returns, per target.

    Attributes:
        images: the best iterates, (N, C, H, W) in [0, 1].
        rep_loss: their representation loss, (N,): the lowest seen.
        best_iteration: (N,) number of steps taken to reach each best iterate
            (0: the seed itself, ``iterations``: the final iterate).
        final_rep_loss: (N,) representation loss of the last iterate.
        history: ``[(t, mean rep loss of the batch at iterate t), ...]`` every
            ``history_every`` iterations and at the end.
    """

    images: torch.Tensor
    rep_loss: torch.Tensor
    best_iteration: torch.Tensor
    final_rep_loss: torch.Tensor
    history: list[tuple[int, float]]


def _keep_best(best: dict, images: torch.Tensor, rep: torch.Tensor, iteration: int) -> None:
    """Replace, in place, each image's best iterate where ``rep`` is strictly lower."""
    better = rep < best["rep_loss"]
    best["rep_loss"] = torch.where(better, rep, best["rep_loss"])
    best["iteration"] = torch.where(better, torch.full_like(best["iteration"], iteration), best["iteration"])
    best["images"] = torch.where(better.view(-1, 1, 1, 1), images, best["images"])


def invert(
    model: nn.Module,
    targets: torch.Tensor,
    seed_image: torch.Tensor,
    objective: Objective,
    *,
    iterations: int,
    step_size: float = 1.0,
    fake_relu: bool = True,
    generator: torch.Generator | None = None,
    state: dict | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[dict], None] | None = None,
    progress: bool = True,
    history_every: int | None = None,
    precision: str = "fp32",
    compile_mode: str | None = None,
) -> InversionResult:
    """Optimise the seed towards every target's representation; keep each image's best iterate.

    At iterate ``t`` (``t = 0..iterations - 1``) the objective gives per-image
    ``(total, rep)`` for ``x'_t``; ``x'_t`` becomes image n's best iterate when
    ``rep_n`` is below every earlier one; then the variable takes the
    normalised step of the module docstring on ``grad total_n`` (taken with
    ``torch.autograd.grad`` w.r.t. the variable only: no gradient reaches the
    model's parameters). The last iterate ``x'_T`` is scored too.

    Args:
        model: a classifier with ``represent(x, fake_relu=...)`` on images in
            [0, 1]. It runs in eval mode (its previous mode is restored at the
            end); its parameters are never changed.
        targets: (N, C, H, W) images in [0, 1]; their representation is computed
            once, without gradient (unnormalised when ``objective.normalize`` is False).
        seed_image: (1, C, H, W) (shared by all targets) or (N, C, H, W), in [0, 1].
        objective: from :func:`iri_alignment.regularizers.make_objective`; its
            ``basis`` chooses pixel or Fourier variables.
        iterations: number of steps (protocol 5000).
        step_size: eta, the l2 length of every image's step (default 1.0).
        fake_relu: straight-through gradient at the last ReLU (default True).
        generator: CPU ``torch.Generator`` for the objective's transforms (default
            None: the objective's own generator, else one seeded with 0). It is
            passed to every objective call and its state is part of ``state``.
        state: a dict from ``on_checkpoint`` to resume from (default None: start at the seed).
        checkpoint_every: call ``on_checkpoint`` after every this many steps (default 0: never).
        on_checkpoint: receives the state dict (detached CPU tensors, ints, the
            generator state, the history) to save as it likes.
        progress: show a tqdm bar with the mean rep loss (default True).
        history_every: iterations between history entries (default None:
            ``max(1, iterations // 100)``).
        precision: ``fp32`` (default, the reference) or ``bf16``: the model's
            forward and backward passes run under bf16 autocast; the variable,
            the step and the best-iterate bookkeeping stay fp32 (the step is
            normalised, so the gradient's scale does not matter). The returned
            ``rep_loss`` and ``final_rep_loss`` are recomputed in fp32.
        compile_mode: ``torch.compile`` mode of the model's forward in the loop
            (default None: eager; see :func:`representation_fn`).

    Returns:
        an :class:`InversionResult`.
    """
    device, dtype = targets.device, targets.dtype
    targets = targets.detach()
    n = targets.shape[0]
    if seed_image.dim() != 4 or seed_image.shape[0] not in (1, n) or seed_image.shape[1:] != targets.shape[1:]:
        raise ValueError(f"seed image of shape {tuple(seed_image.shape)} does not fit targets {tuple(targets.shape)}")
    seed_image = seed_image.detach().to(device=device, dtype=dtype).expand_as(targets)
    if generator is None:
        generator = objective.generator if objective.generator is not None else torch.Generator().manual_seed(0)
    history_every = history_every or max(1, iterations // 100)
    basis = make_basis(objective, targets)
    model_rep = representation_fn(model, fake_relu, precision, compile_mode)
    exact_rep = representation_fn(model, fake_relu)

    def represent_targets(rep_fn):
        with torch.no_grad():
            return rep_fn(targets) if objective.normalize else rep_fn(targets, normalize=False)

    was_training = model.training
    model.eval()
    try:
        target_rep = represent_targets(model_rep)
        if state is None:
            variable = basis.encode(seed_image)
            best = {
                "images": basis.decode(variable).clone(),
                "rep_loss": torch.full((n,), math.inf, device=device, dtype=dtype),
                "iteration": torch.zeros(n, dtype=torch.long, device=device),
            }
            start, history = 0, []
        else:
            variable, best, start, history = _restore(state, basis, generator, targets)

        bar = tqdm(range(start, iterations), total=iterations, initial=start, desc=f"invert {objective.name}",
                   leave=False, disable=not progress)
        for t in bar:
            variable.requires_grad_(True)
            images = basis.decode(variable)
            total, rep = objective(model_rep, images, target_rep, targets, generator=generator)
            (grad,) = torch.autograd.grad(total.sum(), variable)
            with torch.no_grad():
                _keep_best(best, images.detach(), rep, t)
                variable = basis.step(variable.detach(), grad, step_size)
            if t % history_every == 0:
                history.append((t, rep.mean().item()))
                bar.set_postfix(rep=f"{history[-1][1]:.4f}")
            if checkpoint_every and on_checkpoint is not None and (t + 1) % checkpoint_every == 0:
                on_checkpoint(_snapshot(variable, best, t + 1, generator, history, basis))

        with torch.no_grad():
            images = basis.decode(variable)
            final = objective.rep_loss(model_rep, images, target_rep)
            _keep_best(best, images, final, iterations)
            if precision != "fp32" or compile_mode:  # report eager fp32 losses: the chosen iterates, measured exactly
                exact_target = represent_targets(exact_rep)
                final = objective.rep_loss(exact_rep, images, exact_target)
                best["rep_loss"] = objective.rep_loss(exact_rep, best["images"], exact_target)
        history.append((iterations, final.mean().item()))
    finally:
        model.train(was_training)

    log.info("inverted %d targets with %s, %d iterations: best rep loss mean %.4f, max %.4f",
             n, objective.name, iterations, best["rep_loss"].mean().item(), best["rep_loss"].max().item())
    return InversionResult(best["images"], best["rep_loss"], best["iteration"], final, history)


def _snapshot(variable, best, iteration, generator, history, basis) -> dict:
    """The resumable state after ``iteration`` steps, as plain CPU tensors and numbers."""
    return {
        "basis": basis.name,
        "iteration": iteration,
        "variable": variable.detach().cpu().clone(),
        "best_images": best["images"].cpu().clone(),
        "best_rep_loss": best["rep_loss"].cpu().clone(),
        "best_iteration": best["iteration"].cpu().clone(),
        "generator_state": generator.get_state(),
        "history": [list(h) for h in history],
    }


def _restore(state: dict, basis, generator: torch.Generator, targets: torch.Tensor):
    """Undo :func:`_snapshot` onto ``targets``' device; sets the generator's state."""
    if state["basis"] != basis.name:
        raise ValueError(f"state is for the {state['basis']} basis, the objective uses {basis.name}")
    if tuple(state["best_images"].shape) != tuple(targets.shape):
        raise ValueError(f"state holds images of shape {tuple(state['best_images'].shape)}, "
                         f"targets are {tuple(targets.shape)}")
    device = targets.device
    generator.set_state(state["generator_state"])
    best = {
        "images": state["best_images"].to(device),
        "rep_loss": state["best_rep_loss"].to(device),
        "iteration": state["best_iteration"].to(device),
    }
    history = [(int(t), float(v)) for t, v in state["history"]]
    return state["variable"].to(device).clone(), best, int(state["iteration"]), history
