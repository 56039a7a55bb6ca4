"""Batched augmentations: reference equality with torchvision, per-sample
geometry, determinism, and the statistics of the random parameters."""

from __future__ import annotations

import logging
import time

import pytest
import torch
import torchvision.transforms.functional as TF

from iri_alignment import augment as A

log = logging.getLogger(__name__)

STANDARD = {"crop_padding": 4, "flip": True, "jitter": [0.25, 0.25, 0.25], "rotation": 2.0}
VIEWS = {"crop_scale": [0.08, 1.0], "jitter": [0.8, 0.8, 0.8, 0.2], "jitter_p": 0.8, "gray_p": 0.2, "blur_p": 0.5}
OFF = {"crop_padding": 0, "flip": False, "jitter": [0.0, 0.0, 0.0], "rotation": 0.0}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 16, h: int = 32, w: int = 32, seed: int = 0, low: float = 0.0) -> torch.Tensor:
    """Random images in [low, 1]."""
    return low + (1 - low) * torch.rand(n, 3, h, w, generator=gen(seed + 100))


def views(**overrides) -> dict:
    return {**VIEWS, **overrides}


# -- each adjustment equals torchvision's on a single image --------------------------


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_colour_adjustments_match_torchvision(name):
    x = images(5, 16, 12)
    factors = torch.tensor([-0.3, 0.0, 0.1, 0.2, 0.45]) if name == "hue" else torch.tensor([0.2, 0.6, 1.0, 1.3, 1.8])
    ours = getattr(A, f"adjust_{name}")(x, factors)
    ref = torch.stack([getattr(TF, f"adjust_{name}")(xi, fi.item()) for xi, fi in zip(x, factors)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_hsv_round_trip():
    x = images(4, 8, 8)
    torch.testing.assert_close(A.hsv_to_rgb(A.rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("angle", [90.0, 17.0, -2.0])
def test_rotate_matches_torchvision_on_non_square_images(angle):
    x = images(3, 20, 14)
    ours = A.rotate(x, torch.full((3,), angle))
    ref = torch.stack([TF.rotate(xi, angle) for xi in x])
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_rotate_zero_is_identity():
    x = images(3)
    torch.testing.assert_close(A.rotate(x, torch.zeros(3)), x, atol=1e-6, rtol=0)


def test_resized_crop_matches_torchvision():
    x = images(4, 32, 24)
    boxes = torch.tensor([[0, 0, 32, 24], [3, 5, 10, 12], [10, 2, 20, 8], [27, 19, 5, 5]])
    ours = A.resized_crop(x, boxes)
    ref = torch.stack([TF.resized_crop(xi, *b.tolist(), [32, 24], antialias=False) for xi, b in zip(x, boxes)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_gaussian_blur_matches_torchvision():
    x = images(4, 16, 16)
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    ours = A.gaussian_blur(x, 3, sigma)
    ref = torch.stack([TF.gaussian_blur(xi, [3, 3], [s.item()] * 2) for xi, s in zip(x, sigma)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_blur_kernel_is_about_a_tenth_of_the_image():
    assert A.blur_kernel_size(32) == 3
    assert A.blur_kernel_size(224) == 23  # SimCLR's ImageNet kernel
    assert A.blur_kernel_size(64) == 7


# -- pipelines: contracts --------------------------------------------------------------


@pytest.mark.parametrize("pipeline", ["standard", "simclr", "simclr-nocolor"])
def test_shape_dtype_range_and_determinism(pipeline):
    x = images(32)

    def run(seed):
        if pipeline == "standard":
            return A.standard_augment(x, STANDARD, gen(seed))
        return A.simclr_view(x, VIEWS, gen(seed), color=pipeline == "simclr")

    out = run(0)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, run(0))
    assert not torch.allclose(out, run(1))
    assert not torch.allclose(out, x)


def test_two_views_from_one_generator_differ():
    x, g = images(8), gen(0)
    v1, v2 = A.simclr_view(x, VIEWS, g), A.simclr_view(x, VIEWS, g)
    assert not torch.allclose(v1, v2)


def test_rejects_non_float_batches():
    with pytest.raises(ValueError, match="float"):
        A.standard_augment((images(2) * 255).to(torch.uint8), STANDARD, gen())


def test_dispatcher():
    x = images(8)
    assert A.augment("none", x, {}, gen()) is x
    torch.testing.assert_close(A.augment("standard", x, STANDARD, gen(3)), A.standard_augment(x, STANDARD, gen(3)))
    torch.testing.assert_close(A.augment("simclr", x, VIEWS, gen(3)), A.simclr_view(x, VIEWS, gen(3)))
    assert set(A.AUGMENTATIONS) == {"standard", "simclr", "none"}
    with pytest.raises(ValueError, match="unknown augmentation"):
        A.augment("autoaugment", x, STANDARD, gen())
    with pytest.raises(KeyError, match="crop_scale"):  # the supervised config is not a views config
        A.augment("simclr", x, STANDARD, gen())


# -- standard_augment ---------------------------------------------------------------


def test_standard_with_everything_off_is_identity():
    x = images(8)
    assert torch.equal(A.standard_augment(x, OFF, gen()), x)


def test_flip_mirrors_exactly_the_chosen_samples():
    n = 200
    x = images(n)  # every image different and left-right asymmetric
    out = A.standard_augment(x, {**OFF, "flip": True}, gen())
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all()  # each sample is itself or its own mirror image
    assert 0.35 < mirrored.float().mean() < 0.65


def test_crop_translates_by_at_most_the_padding_with_zero_fill():
    p, n = 4, 300
    x = images(n, 16, 16, low=0.1)  # strictly positive, so the zero fill is visible
    out = A.standard_augment(x, {**OFF, "crop_padding": p}, gen())
    padded = torch.nn.functional.pad(x, (p,) * 4)
    found = torch.full((n, 2), 99)
    for top in range(2 * p + 1):
        for left in range(2 * p + 1):
            window = padded[:, :, top:top + 16, left:left + 16]
            hit = (window == out).flatten(1).all(1)
            found[hit] = torch.tensor([p - top, p - left])  # content moves down/right by this
    assert (found.abs() <= p).all(), "every output is the input translated by at most the padding"
    for axis in range(2):
        assert {-p, p} <= set(found[:, axis].tolist()), "both extreme shifts occur"


def test_standard_jitter_factors_stay_in_range():
    # brightness alone: out = clamp(f x); f must lie in [0.75, 1.25]
    x = images(400, 4, 4, low=0.2) * 0.5  # <= 0.5, no clipping at 1.25
    out = A.standard_augment(x, {**OFF, "jitter": [0.25, 0.0, 0.0]}, gen())
    f = (out / x).flatten(1)
    torch.testing.assert_close(f.min(1).values, f.max(1).values, atol=1e-5, rtol=0)  # one factor per image
    assert f.min() >= 0.75 - 1e-5 and f.max() <= 1.25 + 1e-5
    assert f.min() < 0.8 and f.max() > 1.2  # and the range is used


def test_standard_rotation_is_small():
    x = images(64)
    out = A.standard_augment(x, {**OFF, "rotation": 2.0}, gen())
    moved = (out != x).flatten(1).float().mean(1)
    # nearest-neighbour rotation by at most 2 degrees re-samples only pixels far from the centre
    assert moved.max() < 0.5
    assert moved.mean() > 0.0


# -- simclr_view ------------------------------------------------------------------------


def ramp_images(n: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """Channel 0 = column / (W-1), channel 1 = row / (H-1), channel 2 = 0.5."""
    cols = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    rows = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    return torch.stack((cols, rows, torch.full((h, w), 0.5))).expand(n, 3, h, w).contiguous()


def measured_boxes(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box height and width of resized crops of :func:`ramp_images`, read off the ramps."""
    h, w = out.shape[-2:]
    span = out.amax(dim=(2, 3)) - out.amin(dim=(2, 3))
    return span[:, 1] * (h - 1) + 1, span[:, 0] * (w - 1) + 1


def test_crop_scale_respects_a_fixed_scale():
    out = A.simclr_view(ramp_images(300), views(crop_scale=[0.25, 0.25], blur_p=0.0), gen(), color=False)
    bh, bw = measured_boxes(out)
    area = bh * bw / 32**2
    assert ((area - 0.25).abs() < 0.03).all()  # integer box sides round the area
    assert (bw / bh).min() > 0.7 and (bw / bh).max() < 1.45  # aspect in [3/4, 4/3], up to rounding
    assert (bw / bh).min() < 0.85 and (bw / bh).max() > 1.2


def test_crop_scale_statistics_over_the_default_range():
    out = A.simclr_view(ramp_images(1000), views(blur_p=0.0), gen(), color=False)
    bh, bw = measured_boxes(out)
    area = bh * bw / 32**2
    assert area.min() > 0.08 - 0.03 and area.max() <= 1.0 + 1e-4
    # U[0.08, 1] has mean 0.54; rejecting boxes that overflow the image trims the top a little
    assert 0.45 < area.mean() < 0.6
    assert (area < 0.2).float().mean() > 0.05 and (area > 0.8).float().mean() > 0.05


def test_crop_boxes_fit_and_fall_back_to_the_centre():
    boxes = A.random_resized_crop_boxes(500, 32, 24, (0.08, 1.0), (3 / 4, 4 / 3), gen())
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 24).all()
    assert (h > 0).all() and (w > 0).all()
    # scale > 1 never fits: torchvision's fallback is the central crop with aspect clamped to 3/4
    top, left, h, w = A.random_resized_crop_boxes(3, 32, 18, (2.0, 2.0), (3 / 4, 4 / 3), gen()).T
    assert w.tolist() == [18] * 3 and h.tolist() == [24] * 3 and top.tolist() == [4] * 3 and left.tolist() == [0] * 3


def test_full_scale_view_without_colour_or_blur_is_the_image_or_its_mirror():
    x = images(64)
    out = A.simclr_view(x, views(crop_scale=[1.0, 1.0], blur_p=0.0), gen(), color=False)
    close = lambda a, b: ((a - b).abs().flatten(1).amax(1) < 1e-5)  # noqa: E731
    same, mirrored = close(out, x), close(out, x.flip(-1))
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_grayscale_view_has_equal_channels():
    out = A.simclr_view(images(16), views(jitter_p=0.0, gray_p=1.0, blur_p=0.0), gen())
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 1], out[:, 2], atol=1e-6, rtol=0)


def test_grayscale_and_jitter_probabilities():
    n = 1000
    out = A.simclr_view(images(n, 8, 8), views(jitter_p=0.0, gray_p=0.2, blur_p=0.0), gen())
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert 0.15 < gray.float().mean() < 0.25


def ordered_images(n: int) -> torch.Tensor:
    """Every pixel has red > green > blue."""
    u = torch.rand(n, 1, 16, 16, generator=gen(5))
    return torch.cat((0.6 + 0.4 * u, 0.3 + 0.25 * u, 0.25 * u), dim=1)


def test_nocolor_view_keeps_every_pixels_channel_order():
    # crop, flip and blur mix pixels with the same weights in every channel, so r >= g >= b survives
    out = A.simclr_view(ordered_images(200), views(blur_p=1.0), gen(), color=False)
    assert (out[:, 0] >= out[:, 1] - 1e-6).all() and (out[:, 1] >= out[:, 2] - 1e-6).all()


def test_colour_view_breaks_the_channel_order():
    out = A.simclr_view(ordered_images(200), VIEWS, gen())
    ordered = ((out[:, 0] > out[:, 1]) & (out[:, 1] > out[:, 2])).flatten(1).all(1)
    # gray_p 0.2 and hue jitter up to +-0.2 (72 degrees) reorder the channels of many images
    assert 0.2 < (~ordered).float().mean() < 0.9


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x.diff(dim=-1).abs().sum((1, 2, 3)) + x.diff(dim=-2).abs().sum((1, 2, 3)))


def test_blur_smooths_the_blurred_views():
    x = images(200)
    sharp = A.simclr_view(x, views(crop_scale=[1.0, 1.0], blur_p=0.0), gen(), color=False)
    blurred = A.simclr_view(x, views(crop_scale=[1.0, 1.0], blur_p=1.0), gen(), color=False)
    ratio = total_variation(blurred) / total_variation(sharp)
    assert (ratio <= 1 + 1e-5).all()
    assert (ratio < 0.9).float().mean() > 0.7  # sigma ~ U[0.1, 2]: small sigmas barely blur


def test_batch_of_512_runs(caplog):
    x = images(512)
    start = time.perf_counter()
    a = A.standard_augment(x, STANDARD, gen())
    mid = time.perf_counter()
    b = A.simclr_view(x, VIEWS, gen())
    end = time.perf_counter()
    log.info("512 x 32x32: standard %.3f s, simclr view %.3f s", mid - start, end - mid)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_parameters_on_gpu():
    x = images(64)
    for fn, cfg in ((A.standard_augment, STANDARD), (A.simclr_view, VIEWS)):
        cpu = fn(x, cfg, gen(7))
        gpu = fn(x.cuda(), cfg, gen(7)).cpu()
        assert (cpu - gpu).abs().mean() < 1e-3
