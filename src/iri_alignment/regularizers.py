r"""Losses that turn a seed image into an IRI (protocol section 5).

An IRI ``x'`` of a target ``x`` minimises a loss built from the
*representation loss*

.. math::  \mathrm{rep}(x') = \frac{\lVert g(x') - g(x) \rVert_2}{\lVert g(x) \rVert_2}

(``g``: the model's penultimate representation) plus a regularizer. Every
function here works on a batch ``x`` of images in [0, 1], shape (N, C, H, W),
and returns one value per image, shape (N,), so that the optimiser can
normalise each image's gradient on its own.

==================  ===================================================================
``reg-free``        ``rep(x')``
``human-aligned``   ``rep_weight * rep(T(x')) + tv_weight * TV(x') + pnorm_weight * ||x'||_p``,
                    ``T`` a random jitter / scale / rotation / jitter (:func:`random_transform`)
``adversarial``     ``rep(x') - proxy_weight * d(x', x)``, ``d`` a perceptual distance
``freq``            ``rep_weight * rep + tv_weight * TV + blur_weight * blur + mean_weight * sum|x' - 0.5|``
``fourier``         ``rep_weight * rep(x')`` with ``x'`` parameterised in a Fourier basis
                    (the parameterisation lives in :mod:`iri_alignment.inversion`)
==================  ===================================================================

:func:`make_objective` builds an :class:`Objective` from the matching
``inversion.<regularizer>`` section of ``params.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

REGULARIZERS = ("reg-free", "human-aligned", "adversarial", "freq", "fourier")

#: ``model_rep(x, normalize=True) -> (N, rep_dim)``: the model's representation of
#: images ``x`` in [0, 1]; ``normalize=False`` skips the dataset normalisation.
ModelRep = Callable[..., torch.Tensor]
#: ``proxy(x, y) -> (N,)``: a differentiable perceptual distance between two
#: batches of images in [0, 1].
Proxy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- penalties -----------------------------------------------------------------------


def total_variation(x: torch.Tensor) -> torch.Tensor:
    r"""Squared total variation of each image.

    .. math::  \mathrm{TV}(x) = \sum_{c,i,j} (x_{c,i+1,j} - x_{c,i,j})^2 + (x_{c,i,j+1} - x_{c,i,j})^2

    summed over every pair of vertical and horizontal neighbours that lies
    inside the image (no padding).

    Args:
        x: images, (N, C, H, W), values in [0, 1].

    Returns:
        (N,) tensor.
    """
    dy = x[:, :, 1:, :] - x[:, :, :-1, :]
    dx = x[:, :, :, 1:] - x[:, :, :, :-1]
    return dy.pow(2).flatten(1).sum(1) + dx.pow(2).flatten(1).sum(1)


def pnorm(x: torch.Tensor, p: float) -> torch.Tensor:
    r"""The p-norm of each image, taken over all its pixels and channels.

    .. math::  \lVert x \rVert_p = \Big(\sum_{c,i,j} |x_{c,i,j}|^p\Big)^{1/p}

    Its gradient at an all-zero image is taken to be zero (``torch.linalg.vector_norm``),
    so a black seed does not produce NaNs.

    Args:
        x: images, (N, C, H, W), values in [0, 1].
        p: the exponent, > 0 (the protocol uses 6).

    Returns:
        (N,) tensor.
    """
    return torch.linalg.vector_norm(x.flatten(1), ord=p, dim=1)


def mean_penalty(x: torch.Tensor) -> torch.Tensor:
    r"""L1 distance of each image from mid-grey (Lucid's ``L1(constant=0.5)``).

    .. math::  \sum_{c,i,j} |x_{c,i,j} - 0.5|

    Args:
        x: images, (N, C, H, W), values in [0, 1].

    Returns:
        (N,) tensor.
    """
    return (x - 0.5).abs().flatten(1).sum(1)


def box_blur(x: torch.Tensor) -> torch.Tensor:
    r"""Lucid's 3x3 blur: each pixel becomes a weighted mean of its 3x3 neighbourhood.

    .. math::  B(x)_{c,i,j} = \frac{\sum_{u,v} k_{uv}\, x_{c,i+u,j+v}}{\sum_{u,v} k_{uv}},
               \qquad u, v \in \{-1, 0, 1\},\ k_{00} = 1,\ k_{uv} = 0.5 \text{ otherwise}

    with both sums over the neighbours inside the image only.

    Channels are blurred separately; at the border only neighbours inside the
    image count (zero padding, renormalised), so a constant image is unchanged.

    Args:
        x: images, (N, C, H, W).

    Returns:
        blurred images, same shape, dtype and device.
    """
    channels = x.shape[1]
    kernel = torch.full((3, 3), 0.5, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 1.0
    kernel = kernel.expand(channels, 1, 3, 3)
    summed = F.conv2d(x, kernel, padding=1, groups=channels)
    weights = F.conv2d(torch.ones_like(x[:1]), kernel, padding=1, groups=channels)
    return summed / weights


def blur_penalty(x: torch.Tensor) -> torch.Tensor:
    r"""High-frequency energy of each image, with a gradient that blurs it.

    .. math::  \mathrm{blur}(x) = \tfrac12 \lVert x - \mathrm{sg}[B(x)] \rVert_2^2,
               \qquad \nabla_x \mathrm{blur} = x - B(x)

    ``B`` is :func:`box_blur` and ``sg`` stops the gradient, exactly as Lucid's
    ``blur_input_each_step`` (the frequency penalisation that the ``freq``
    ablation copies, with Lucid's weights 5e-4 for TV and blur and 5e-5 for
    ``L1(constant=0.5)``): a gradient step of size ``k`` on this term alone is
    ``x <- (1 - k) x + k B(x)``. Choice: this form, rather than the
    fully differentiated ``||x - B(x)||^2``, because it is the penalty the
    authors' Lucid-based code used; both vanish on smooth images.

    Args:
        x: images, (N, C, H, W), values in [0, 1].

    Returns:
        (N,) tensor.
    """
    return 0.5 * (x - box_blur(x).detach()).pow(2).flatten(1).sum(1)


# -- transformation robustness -------------------------------------------------------


@dataclass(frozen=True)
class TransformDraw:
    """One draw of :func:`random_transform`, shared by the whole batch.

    Attributes:
        shift: (dy, dx) pixel translation applied first (content moves down/right when positive).
        scale: zoom factor (> 1 enlarges the content).
        angle: rotation in degrees (clockwise on screen when positive; the
            distribution is symmetric, so the sign convention is immaterial).
        shift_after: (dy, dx) pixel translation applied last.
    """

    shift: tuple[int, int]
    scale: float
    angle: float
    shift_after: tuple[int, int]


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A uniform integer in {0, ..., high - 1}."""
    return int(torch.randint(high, (1,), generator=generator).item())


def _draw_shift(jitter: int, generator: torch.Generator | None) -> tuple[int, int]:
    """Offsets o ~ U{0..jitter} per axis, returned centred as o - floor(jitter / 2)."""
    if jitter <= 0:
        return (0, 0)
    return (_randint(jitter + 1, generator) - jitter // 2, _randint(jitter + 1, generator) - jitter // 2)


def draw_transform(
    *,
    jitter: int,
    scales: Sequence[float],
    rotate: int,
    zero_rotation_weight: float,
    jitter_after: int,
    generator: torch.Generator | None = None,
) -> TransformDraw:
    """Draw the parameters of one :func:`random_transform` (see there for the distribution).

    Draws, in this order: the first shift (2 integers), the scale (1 integer
    index), the angle (1 multinomial draw; none when ``rotate`` is 0), the last
    shift (2 integers), all from ``generator`` (a CPU generator; the global
    RNG when None). The draw is a handful of Python numbers, so it costs no
    device synchronisation whatever device the images live on.
    """
    shift = _draw_shift(jitter, generator)
    scale = float(scales[_randint(len(scales), generator)])
    angle = 0.0
    if rotate > 0:
        angles = torch.arange(-rotate, rotate + 1)
        weights = torch.where(angles == 0, float(zero_rotation_weight), 1.0)
        angle = float(angles[torch.multinomial(weights, 1, generator=generator)].item())
    return TransformDraw(shift, scale, angle, _draw_shift(jitter_after, generator))


def _translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift the content of ``x`` by (dy, dx) whole pixels; the uncovered border is
    filled by reflection (``F.pad(mode="reflect")``, needs |shift| < H, W)."""
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return x
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return padded[..., pad - dy : pad - dy + height, pad - dx : pad - dx + width]


def _scale_rotate(x: torch.Tensor, scale: float, angle: float) -> torch.Tensor:
    """Zoom by ``scale`` and rotate by ``angle`` degrees about the image centre.

    One bilinear resampling (``affine_grid`` + ``grid_sample``, reflection
    padding, ``align_corners=False``): the output pixel at centred pixel
    coordinates p samples the input at ``R(-angle) p / scale``. Skipped
    (identity, exact) when scale is 1 and angle 0.
    """
    if scale == 1.0 and angle == 0.0:
        return x
    n, _, height, width = x.shape
    rad = math.radians(angle)
    cos, sin = math.cos(rad) / scale, math.sin(rad) / scale
    # rotation in pixel units, expressed in the [-1, 1] coordinates of affine_grid
    aspect = width / height
    theta = torch.tensor([[cos, sin / aspect, 0.0], [-sin * aspect, cos, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def apply_transform(x: torch.Tensor, draw: TransformDraw) -> torch.Tensor:
    """Apply one :class:`TransformDraw` to every image of ``x`` (N, C, H, W): shift,
    scale and rotate, shift again. Differentiable in ``x``; shape preserved."""
    x = _translate(x, *draw.shift)
    x = _scale_rotate(x, draw.scale, draw.angle)
    return _translate(x, *draw.shift_after)


def random_transform(
    x: torch.Tensor,
    *,
    jitter: int,
    scales: Sequence[float],
    rotate: int,
    zero_rotation_weight: float,
    jitter_after: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Lucid/Lucent's transformation robustness: one random draw for the whole batch.

    In order:

    1. jitter: translate by (o_y - floor(j/2), o_x - floor(j/2)) pixels, o ~ U{0..j}, j = ``jitter``;
    2. scale by s ~ U(``scales``) and rotate by a ~ {-r, .., r} degrees (r = ``rotate``), where
       a = 0 has weight ``zero_rotation_weight`` and every other angle weight 1:
       P(a = 0) = w0 / (2 r + w0) (6/26 in the protocol, Lucent's
       ``list(range(-10, 11)) + 5 * [0]``);
    3. jitter again with j = ``jitter_after``.

    Differences from Lucent (documented choice): Lucent's jitter crops the image
    (it shrinks by j px) and its scaling resizes it; here the image keeps its
    size, translations fill the border by reflection and scaling/rotation
    resample with reflection padding, so any model sees the input size it
    was trained on. The translation span (j + 1 positions per axis) is Lucent's.

    Args:
        x: images, (N, C, H, W), values in [0, 1].
        jitter: largest first offset in pixels (protocol 7), >= 0.
        scales: zoom factors to choose from (protocol 0.90, 0.92, ..., 1.10).
        rotate: largest rotation in whole degrees (protocol 10), >= 0.
        zero_rotation_weight: weight of angle 0 among the 2 * rotate + 1 angles (protocol 6).
        jitter_after: largest last offset in pixels (protocol 3), >= 0.
        generator: source of the draw (default None: torch's global RNG).

    Returns:
        transformed images, same shape; gradients flow to ``x``.
    """
    draw = draw_transform(
        jitter=jitter, scales=scales, rotate=rotate, zero_rotation_weight=zero_rotation_weight,
        jitter_after=jitter_after, generator=generator,
    )
    return apply_transform(x, draw)


# -- objectives ------------------------------------------------------------------------


def rep_loss(
    model_rep: ModelRep, x_prime: torch.Tensor, target_rep: torch.Tensor, *, normalize: bool = True
) -> torch.Tensor:
    r"""Relative representation distance of each image to its target.

    .. math::  \mathrm{rep}(x') = \lVert g(x') - g(x) \rVert_2 \,/\, \max(\lVert g(x) \rVert_2, 10^{-12})

    Args:
        model_rep: ``model_rep(x, normalize=...) -> (N, rep_dim)``.
        x_prime: images, (N, C, H, W), values in [0, 1].
        target_rep: g(x) of the targets, (N, rep_dim).
        normalize: passed to ``model_rep`` when False (default True: the
            dataset normalisation is applied, as the protocol requires).

    Returns:
        (N,) tensor, differentiable in ``x_prime``.
    """
    rep = model_rep(x_prime) if normalize else model_rep(x_prime, normalize=False)
    diff = torch.linalg.vector_norm(rep - target_rep, dim=1)
    return diff / torch.linalg.vector_norm(target_rep, dim=1).clamp_min(1e-12)


Penalty = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Objective:
    """A regularized inversion loss: ``total = rep_weight * rep(T(x')) + sum_k w_k * penalty_k(x', x)``.

    Call it as ``objective(model_rep, x_prime, target_rep, target_images)``;
    it returns ``(total, rep)``, both (N,):

    * ``total``: the per-image loss the optimiser descends (differentiable in ``x_prime``);
    * ``rep``: :func:`rep_loss` of the *untransformed* ``x_prime``, detached:
      the number that is logged, tracked for the best iterate and reported.

    Attributes:
        name: the regularizer, one of :data:`REGULARIZERS`.
        rep_weight: weight of the representation term (default 1.0).
        penalties: ``(weight, penalty)`` pairs; ``penalty(x_prime, target_images) -> (N,)``.
        transform: ``transform(x, generator) -> x`` applied to ``x_prime`` inside
            the representation term only (default None: none).
        normalize: whether the model sees dataset-normalised inputs (default
            True; False only for the faithful adversarial regularizer). The
            inversion computes the targets' representation the same way.
        basis: ``"pixel"`` or ``"fourier"``: the variable the optimiser steps in
            (:mod:`iri_alignment.inversion`).
        decay: spectrum decay of the Fourier basis (unused for pixels).
        generator: default source of the transform's randomness (a
            ``generator=`` given at call time takes precedence).
    """

    name: str
    rep_weight: float = 1.0
    penalties: tuple[tuple[float, Penalty], ...] = ()
    transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None
    normalize: bool = True
    basis: str = "pixel"
    decay: float = 0.0
    generator: torch.Generator | None = field(default=None, repr=False)

    def rep_loss(self, model_rep: ModelRep, x_prime: torch.Tensor, target_rep: torch.Tensor) -> torch.Tensor:
        """:func:`rep_loss` with this objective's input normalisation."""
        return rep_loss(model_rep, x_prime, target_rep, normalize=self.normalize)

    def __call__(
        self,
        model_rep: ModelRep,
        x_prime: torch.Tensor,
        target_rep: torch.Tensor,
        target_images: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(total, rep)`` per image for ``x_prime`` (N, C, H, W) in [0, 1]."""
        if self.transform is None:
            rep = self.rep_loss(model_rep, x_prime, target_rep)
            rep_term = rep
        else:
            gen = generator if generator is not None else self.generator
            rep_term = self.rep_loss(model_rep, self.transform(x_prime, gen), target_rep)
            with torch.no_grad():
                rep = self.rep_loss(model_rep, x_prime, target_rep)
        total = self.rep_weight * rep_term
        for weight, penalty in self.penalties:
            total = total + weight * penalty(x_prime, target_images)
        return total, rep.detach()


def _require(cfg: Mapping | None, name: str, keys: Sequence[str]) -> Mapping:
    missing = [k for k in keys if cfg is None or k not in cfg]
    if missing:
        raise ValueError(f"regularizer {name!r} needs inversion settings {', '.join(missing)} (see params.yaml)")
    return cfg


def make_objective(
    name: str,
    cfg: Mapping | None,
    *,
    proxy: Proxy | None = None,
    generator: torch.Generator | None = None,
) -> Objective:
    """Build the loss of one regularizer from its ``params.yaml`` section.

    Args:
        name: one of :data:`REGULARIZERS` (underscores are accepted for hyphens).
        cfg: the section ``inversion.<name with _>``; ignored for ``reg-free`` (may be None).
            human-aligned: ``rep_weight, tv_weight, pnorm_weight, p, jitter, scales,
            rotate, zero_rotation_weight, jitter_after``; adversarial:
            ``proxy_weight, faithful`` (``proxy`` names the distance, which the
            caller builds); freq: ``rep_weight, tv_weight, blur_weight,
            mean_weight``; fourier: ``rep_weight, decay``.
        proxy: for ``adversarial`` only (required there): ``proxy(x', x) -> (N,)``,
            a differentiable distance of images in [0, 1] (LPIPS, or an offline proxy).
        generator: default source of the human-aligned transform's randomness
            (default None: torch's global RNG unless the caller passes one).

    Returns:
        an :class:`Objective`. For ``adversarial`` with ``faithful: true`` the model
        sees *unnormalised* inputs, for ``x'`` and for the targets alike,
        reproducing the authors' code (protocol 5); ``model_rep`` is then called
        as ``model_rep(x, normalize=False)``.

    Raises:
        ValueError: unknown name, missing settings, or no proxy for ``adversarial``.
    """
    key = name.replace("_", "-")
    if key == "reg-free":
        return Objective(key)
    if key == "human-aligned":
        c = _require(cfg, key, ("rep_weight", "tv_weight", "pnorm_weight", "p", "jitter", "scales", "rotate",
                                "zero_rotation_weight", "jitter_after"))
        p = float(c["p"])

        def transform(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
            return random_transform(
                x, jitter=int(c["jitter"]), scales=tuple(c["scales"]), rotate=int(c["rotate"]),
                zero_rotation_weight=float(c["zero_rotation_weight"]), jitter_after=int(c["jitter_after"]),
                generator=gen,
            )

        return Objective(
            key, rep_weight=float(c["rep_weight"]), transform=transform, generator=generator,
            penalties=((float(c["tv_weight"]), lambda x, _: total_variation(x)),
                       (float(c["pnorm_weight"]), lambda x, _: pnorm(x, p))),
        )
    if key == "adversarial":
        c = _require(cfg, key, ("proxy_weight", "faithful"))
        if proxy is None:
            raise ValueError(f"the adversarial regularizer needs a proxy distance (configured: {c.get('proxy')!r})")
        return Objective(key, penalties=((-float(c["proxy_weight"]), proxy),), normalize=not bool(c["faithful"]))
    if key == "freq":
        c = _require(cfg, key, ("rep_weight", "tv_weight", "blur_weight", "mean_weight"))
        return Objective(
            key, rep_weight=float(c["rep_weight"]),
            penalties=((float(c["tv_weight"]), lambda x, _: total_variation(x)),
                       (float(c["blur_weight"]), lambda x, _: blur_penalty(x)),
                       (float(c["mean_weight"]), lambda x, _: mean_penalty(x))),
        )
    if key == "fourier":
        c = _require(cfg, key, ("rep_weight", "decay"))
        return Objective(key, rep_weight=float(c["rep_weight"]), basis="fourier", decay=float(c["decay"]))
    raise ValueError(f"unknown regularizer {name!r}: choose one of {', '.join(REGULARIZERS)}")
