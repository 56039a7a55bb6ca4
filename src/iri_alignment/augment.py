"""Batched training augmentations: the supervised CIFAR pipeline and SimCLR views.

Every transform works on a whole float batch ``x`` of shape (N, 3, H, W) with
values in [0, 1], on the batch's own device, with *per-sample* random
parameters. All random numbers are drawn on the CPU from the given
``torch.Generator`` and then moved to ``x.device``, so a seed fixes the
parameters whatever the device (outputs then agree up to float rounding).

Pipelines (protocol sections 2 and 4)::

    standard_augment  crop (zero padding) -> h-flip -> colour jitter -> rotation
    simclr_view       random-resized crop -> h-flip -> [colour jitter, p] ->
                      [grayscale, p] -> [Gaussian blur, p]

The standard pipeline is the order of MadryLab ``robustness``'s CIFAR
training transforms. Colour jitter applies brightness, contrast, saturation
(and hue) in this *fixed* order; torchvision's ``ColorJitter`` shuffles the
order per call, which we do not reproduce. Each adjustment follows
torchvision's definition, so one image with one factor gives torchvision's
result (see the tests).

Usage::

    gen = torch.Generator().manual_seed(0)
    x = augment("standard", x, params["data"]["augmentation"], gen)
    v1 = simclr_view(x, params["training"]["contrastive"]["views"], gen)
    v2 = simclr_view(x, params["training"]["contrastive"]["views"], gen)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


# -- random draws (always on the CPU generator) -----------------------------------


def _uniform(n: int, low: float, high: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``n`` draws from U[low, high), drawn on the CPU with ``generator``, on the device and dtype of ``like``."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


def _bernoulli(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` booleans, each true with probability ``p``, drawn on the CPU with ``generator``."""
    return (torch.rand(n, generator=generator) < p).to(device)


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    """Reshape an (N,) parameter to (N, 1, 1, 1) so it broadcasts over images."""
    return v.view(-1, 1, 1, 1)


def _check_images(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"expected a float (N, 3, H, W) batch in [0, 1], got {x.dtype} {tuple(x.shape)}")


# -- colour ------------------------------------------------------------------------


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` of a (N, 3, H, W) batch, shape (N, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f * x + (1 - f) * other, 0, 1)`` with a per-sample factor ``f`` of shape (N,)."""
    f = _per_sample(factor)
    return (f * x + (1 - f) * other).clamp(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f * x, 0, 1)`` per sample (torchvision ``adjust_brightness``); ``factor`` (N,) >= 0."""
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f * x + (1 - f) * m, 0, 1)``, ``m`` the image's mean luma (torchvision ``adjust_contrast``)."""
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f * x + (1 - f) * gray(x), 0, 1)`` per pixel (torchvision ``adjust_saturation``)."""
    return _blend(x, rgb_to_grayscale(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to HSV, each in [0, 1], shape preserved (N, 3, H, W); as torchvision."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    chroma = maxc - minc
    flat = chroma == 0
    sat = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    safe = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    # hue sector: red is the max -> (b - g), green -> 2 + r - b, blue -> 4 + g - r
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    hue = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    return torch.stack((hue, sat, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv` (N, 3, H, W), equal to torchvision's.

    Channel ``c`` with offset ``n_c`` (5 for red, 3 for green, 1 for blue) is
    ``V - V S clamp(min(k, 4 - k), 0, 1)``, ``k = (n_c + 6 H) mod 6``.
    """
    h, s, v = x[:, :1], x[:, 1:2], x[:, 2:]
    offsets = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(offsets + 6.0 * h, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0, 1)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate hue: ``H <- (H + f) mod 1`` in HSV space, ``factor`` (N,) in [-0.5, 0.5] (torchvision ``adjust_hue``)."""
    hsv = rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + factor.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), dim=1))


def color_jitter(x: torch.Tensor, strength: Sequence[float], generator: torch.Generator) -> torch.Tensor:
    """Per-sample colour jitter with torchvision ``ColorJitter`` semantics, in a fixed order.

    Args:
        x: float (N, 3, H, W) in [0, 1].
        strength: ``(brightness, contrast, saturation)`` or ``(b, c, s, hue)``.
            Brightness, contrast and saturation factors are drawn from
            ``U[max(0, 1 - s), 1 + s]``, the hue shift from ``U[-hue, hue]``
            (hue <= 0.5). A zero strength skips that adjustment (and its draw).
        generator: CPU generator for the factors.

    Returns:
        The batch after brightness -> contrast -> saturation -> hue, in [0, 1].
    """
    names = ("brightness", "contrast", "saturation", "hue")
    if not 3 <= len(strength) <= 4:
        raise ValueError(f"colour jitter takes 3 or 4 strengths {names}, got {list(strength)}")
    adjust = {"brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation}
    n = x.shape[0]
    for name, s in zip(names, strength):
        if s == 0:
            continue
        if name == "hue":
            if not 0 <= s <= 0.5:
                raise ValueError(f"hue jitter must be in [0, 0.5], got {s}")
            x = adjust_hue(x, _uniform(n, -s, s, generator, x))
        else:
            x = adjust[name](x, _uniform(n, max(0.0, 1 - s), 1 + s, generator, x))
    return x


# -- geometry ----------------------------------------------------------------------


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by ``padding`` zeros on every side and take a random H x W window per sample.

    Equivalent to translating each image by an integer ``(dy, dx)`` drawn
    uniformly from ``{-padding, .., padding}^2`` with zero fill (torchvision
    ``RandomCrop(size, padding)``). Exact: no interpolation.
    """
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_hflip(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (default use: 0.5)."""
    flip = _bernoulli(x.shape[0], p, generator, x.device)
    return torch.where(_per_sample(flip), x.flip(-1), x)


def rotate(x: torch.Tensor, degrees: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Rotate each image about its centre by ``degrees[n]`` (counter-clockwise), zero fill.

    Matches torchvision ``rotate`` (``expand=False``, ``fill=0``); ``mode`` is
    the ``grid_sample`` interpolation ("nearest", torchvision's default, or
    "bilinear"). In pixel coordinates ``(u, v)`` about the centre (v pointing
    down), output pixel ``(u, v)`` samples the input at
    ``(cos t u - sin t v, sin t u + cos t v)``; in ``affine_grid``'s normalised
    coordinates the off-diagonal terms pick up the aspect ratio (H/W, W/H).
    """
    n, _, h, w = x.shape
    theta = torch.deg2rad(degrees.to(x.device, torch.float32))
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    mat = torch.stack(
        (torch.stack((cos, -sin * h / w, zero), 1), torch.stack((sin * w / h, cos, zero), 1)), dim=1
    )  # (N, 2, 3)
    grid = F.affine_grid(mat.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """Crop boxes of torchvision ``RandomResizedCrop``, drawn for ``n`` images at once.

    Per sample and attempt: area ``a = H W s``, ``s ~ U[scale]``; aspect
    ``r = exp(u)``, ``u ~ U[log ratio]``; box ``w = round(sqrt(a r))``,
    ``h = round(sqrt(a / r))``. The first of ``attempts`` boxes that fits
    (``0 < w <= W``, ``0 < h <= H``) is placed uniformly at random; a sample
    with none falls back to the largest central box with aspect clamped into
    ``ratio`` (torchvision's fallback).

    Returns:
        int64 (n, 4) CPU tensor of ``(top, left, h, w)`` in pixels.
    """
    u_area = torch.rand(n, attempts, generator=generator, dtype=torch.float64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, attempts, generator=generator, dtype=torch.float64))
    ws = torch.round(torch.sqrt(area * aspect)).long()
    hs = torch.round(torch.sqrt(area / aspect)).long()
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = fits.long().argmax(dim=1)  # first fitting attempt (0 when none fits)
    h_box = hs.gather(1, first[:, None]).squeeze(1)
    w_box = ws.gather(1, first[:, None]).squeeze(1)
    # torchvision's fallback: central crop, aspect clamped into the ratio range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_h, fb_w = height, int(round(height * ratio[1]))
    else:
        fb_w, fb_h = width, height
    ok = fits.any(dim=1)
    h_box = torch.where(ok, h_box, torch.full_like(h_box, fb_h))
    w_box = torch.where(ok, w_box, torch.full_like(w_box, fb_w))
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (height - h_box + 1)).long()
    left = torch.floor(u[:, 1] * (width - w_box + 1)).long()
    top = torch.where(ok, top, (height - h_box) // 2)
    left = torch.where(ok, left, (width - w_box) // 2)
    return torch.stack((top, left, h_box, w_box), dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop box ``(top, left, h, w)`` of each image and resize it back to H x W, bilinearly.

    One ``affine_grid``/``grid_sample`` call: in normalised coordinates
    (``align_corners=False``) output point ``o`` samples the input at
    ``(w / W) o + c_x`` horizontally, ``c_x = 2 (left + w / 2) / W - 1`` the
    box centre (likewise vertically), i.e. pixel ``left + (o_px + 0.5) w / W - 0.5``:
    torchvision ``resized_crop`` with bilinear interpolation (no antialiasing,
    which only matters when shrinking; a crop is never larger than the image).
    As there, sampling points are clamped to the centres of the box's edge
    pixels, so no pixel outside the box contributes.
    """
    n, _, h, w = x.shape
    top, left, bh, bw = boxes.to(x.device, torch.float32).unbind(1)
    zero = torch.zeros_like(top)
    mat = torch.stack(
        (
            torch.stack((bw / w, zero, 2 * (left + bw / 2) / w - 1), 1),
            torch.stack((zero, bh / h, 2 * (top + bh / 2) / h - 1), 1),
        ),
        dim=1,
    )
    grid = F.affine_grid(mat.to(x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2) as (x, y)
    # normalised centres of the box's first and last pixel column / row
    lo = torch.stack(((2 * left + 1) / w - 1, (2 * top + 1) / h - 1), 1).to(x.dtype)[:, None, None, :]
    hi = torch.stack(((2 * (left + bw) - 1) / w - 1, (2 * (top + bh) - 1) / h - 1), 1).to(x.dtype)[:, None, None, :]
    grid = torch.minimum(torch.maximum(grid, lo), hi)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def blur_kernel_size(size: int, fraction: float = 0.1) -> int:
    """Odd Gaussian kernel size of about ``fraction`` of the image side, at least 3 (SimCLR: 23 px at 224)."""
    k = max(3, int(round(fraction * size)))
    return k if k % 2 == 1 else k + 1


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` (N,), reflect padding (torchvision ``gaussian_blur``).

    Kernel ``k_i = exp(-i^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2))`` for
    ``i = -(K-1)/2 .. (K-1)/2``, applied along rows then columns; one grouped
    convolution handles every sample and channel at once.
    """
    n, c, h, w = x.shape
    half = (kernel_size - 1) / 2
    offsets = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    sig = sigma.to(x.device, x.dtype)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None, :] / sig) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, K)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * c)  # along width
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * c)  # along height
    return y.reshape(n, c, h, w)


# -- pipelines -----------------------------------------------------------------------


def standard_augment(x: torch.Tensor, cfg: Mapping, generator: torch.Generator) -> torch.Tensor:
    """Supervised CIFAR training augmentation (protocol 2), per-sample parameters.

    Args:
        x: float (N, 3, H, W) in [0, 1], any device.
        cfg: ``data.augmentation`` of params.yaml (every key required):
            ``crop_padding`` (int; paper: 4): zero padding of the random crop, i.e. an
            integer translation in ``[-p, p]^2``;
            ``flip`` (bool; paper: true): horizontal flip with probability 0.5;
            ``jitter`` ([b, c, s]; paper: [0.25, 0.25, 0.25]): brightness, contrast,
            saturation factors ``~ U[1 - j, 1 + j]``, applied in that order;
            ``rotation`` (degrees; paper: 2.0): angle ``~ U[-r, r]``, nearest
            interpolation with zero fill (torchvision ``RandomRotation``).
        generator: CPU ``torch.Generator`` for every random parameter.

    Returns:
        Augmented batch, same shape, dtype and device, values in [0, 1].
        With padding 0, flip off, zero jitter and rotation it is ``x`` itself.
    """
    _check_images(x)
    x = random_crop(x, int(cfg["crop_padding"]), generator)
    if cfg["flip"]:
        x = random_hflip(x, 0.5, generator)
    if any(j != 0 for j in cfg["jitter"]):
        x = color_jitter(x, cfg["jitter"], generator)
    r = float(cfg["rotation"])
    if r != 0:
        x = rotate(x, _uniform(x.shape[0], -r, r, generator, x), mode="nearest")
    return x


def simclr_view(x: torch.Tensor, cfg: Mapping, generator: torch.Generator, *, color: bool = True) -> torch.Tensor:
    """One SimCLR view of each image (Chen et al. 2020), per-sample parameters.

    Args:
        x: float (N, 3, H, W) in [0, 1], any device.
        cfg: ``training.contrastive.views`` of params.yaml (every key required):
            ``crop_scale`` ([lo, hi]; paper: [0.08, 1.0]): area fraction of the
            random-resized crop (aspect ratio in [3/4, 4/3]), resized back to
            H x W bilinearly; a horizontal flip with probability 0.5 follows;
            ``jitter`` ([b, c, s, hue]; paper: [0.8, 0.8, 0.8, 0.2]) applied
            with probability ``jitter_p`` (paper: 0.8), see :func:`color_jitter`;
            ``gray_p`` (paper: 0.2): probability of converting to grayscale (luma in
            all three channels);
            ``blur_p`` (paper: 0.5): probability of a Gaussian blur, kernel about 10%
            of the image side (:func:`blur_kernel_size`), ``sigma ~ U[0.1, 2.0]``.
        generator: CPU ``torch.Generator`` for every random parameter.
        color: default True; False drops jitter and grayscale (``simclr-nocolor``).

    Returns:
        The view, same shape, dtype and device as ``x``, values in [0, 1].
        Call twice for the two views of a pair.
    """
    _check_images(x)
    missing = [k for k in ("crop_scale", "jitter", "jitter_p", "gray_p", "blur_p") if k not in cfg]
    if missing:
        raise KeyError(f"SimCLR view config (training.contrastive.views) lacks {missing}; got keys {sorted(cfg)}")
    n, _, h, w = x.shape
    boxes = random_resized_crop_boxes(n, h, w, cfg["crop_scale"], (3 / 4, 4 / 3), generator)
    x = resized_crop(x, boxes)
    x = random_hflip(x, 0.5, generator)
    if color:
        apply = _per_sample(_bernoulli(n, cfg["jitter_p"], generator, x.device))
        x = torch.where(apply, color_jitter(x, cfg["jitter"], generator), x)
        gray = _per_sample(_bernoulli(n, cfg["gray_p"], generator, x.device))
        x = torch.where(gray, rgb_to_grayscale(x).expand_as(x), x)
    blur = _bernoulli(n, cfg["blur_p"], generator, x.device)
    sigma = _uniform(n, 0.1, 2.0, generator, x)
    if blur.any():
        x = x.clone()
        x[blur] = gaussian_blur(x[blur], blur_kernel_size(min(h, w)), sigma[blur])
    return x.clamp(0, 1)


def identity(x: torch.Tensor, cfg: Mapping | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """No augmentation: returns ``x`` unchanged (the ``none`` entry)."""
    return x


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, Mapping, torch.Generator], torch.Tensor]] = {
    "standard": standard_augment,
    "simclr": simclr_view,
    "none": identity,
}


def augment(name: str, x: torch.Tensor, cfg: Mapping, generator: torch.Generator) -> torch.Tensor:
    """Apply the supervised-regime augmentation ``name`` (``regime.<r>.augment`` in params.yaml).

    Args:
        name: ``"standard"`` (cfg = ``data.augmentation``), ``"simclr"`` (one
            SimCLR view, cfg = ``training.contrastive.views``; the
            ``standard-simclraug`` ablation) or ``"none"``.
        x: float (N, 3, H, W) in [0, 1].
        cfg: the configuration the named augmentation reads (see above).
        generator: CPU ``torch.Generator``.
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose from {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](x, cfg, generator)
