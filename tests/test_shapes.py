"""Tests of the embedded shapes dataset (iri_alignment.data.shapes)."""

from __future__ import annotations

import numpy as np
import pytest

from iri_alignment.data.shapes import (
    CLASSES,
    IMAGE_SIZE,
    MIN_LUMA_CONTRAST,
    generate_shapes,
    luminance,
    make_splits,
)


@pytest.fixture(scope="module")
def clean():
    """500 noise-free images (same geometry and colours as ``noisy``)."""
    return generate_shapes(500, 7, noise=0.0)


@pytest.fixture(scope="module")
def noisy():
    return generate_shapes(500, 7)


def _corners(images: np.ndarray) -> np.ndarray:
    """The four corner pixels of each image, (n, 4, 3)."""
    return images[:, [0, 0, -1, -1], [0, -1, 0, -1]]


def test_classes():
    assert isinstance(CLASSES, tuple)
    assert len(CLASSES) == 10
    assert len(set(CLASSES)) == 10
    assert all(isinstance(c, str) and c for c in CLASSES)


def test_shapes_dtypes_ranges(noisy):
    images, labels = noisy
    assert images.shape == (500, IMAGE_SIZE, IMAGE_SIZE, 3) == (500, 32, 32, 3)
    assert images.dtype == np.uint8
    assert labels.shape == (500,)
    assert labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < len(CLASSES)
    # Images use a good part of the range (random colours), not a constant.
    assert images.min() < 30 and images.max() > 225


@pytest.mark.parametrize("n", [0, 1, 9, 10, 37])
def test_small_sizes(n):
    images, labels = generate_shapes(n, 0)
    assert images.shape == (n, 32, 32, 3) and labels.shape == (n,)
    assert images.dtype == np.uint8 and labels.dtype == np.int64


def test_invalid_arguments():
    with pytest.raises(ValueError):
        generate_shapes(-1, 0)
    with pytest.raises(ValueError):
        generate_shapes(10, 0, noise=-0.1)
    with pytest.raises(ValueError):
        generate_shapes(10, 0, rotation=-1.0)


def test_deterministic(noisy):
    images, labels = generate_shapes(500, 7)
    assert images.tobytes() == noisy[0].tobytes()
    assert labels.tobytes() == noisy[1].tobytes()


def test_different_seed_differs(noisy):
    images, labels = generate_shapes(500, 8)
    assert not np.array_equal(images, noisy[0])
    assert not np.array_equal(labels, noisy[1])


def test_does_not_use_global_rng():
    np.random.seed(0)
    a = generate_shapes(50, 3)
    np.random.seed(1)
    b = generate_shapes(50, 3)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    # ... and leaves the global stream untouched.
    np.random.seed(5)
    expected = np.random.random()
    np.random.seed(5)
    generate_shapes(50, 3)
    assert np.random.random() == expected


@pytest.mark.parametrize("n", [500, 1003])
def test_balanced_and_shuffled(n):
    _, labels = generate_shapes(n, 1)
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == n
    assert counts.max() - counts.min() <= (1 if n % 10 else 0)
    assert set(counts.tolist()) <= {n // 10, n // 10 + 1}
    # Shuffled: not in class-sorted or cyclic order.
    assert not np.array_equal(labels, np.sort(labels))
    assert not np.array_equal(labels, np.arange(n) % 10)


def test_noise_is_last_draw(clean, noisy):
    """noise only adds pixel noise: geometry, colours and labels are unchanged."""
    assert np.array_equal(clean[1], noisy[1])
    diff = noisy[0].astype(int) - clean[0].astype(int)
    assert 0.02 * 255 < diff.std() < 0.04 * 255  # default noise 0.03
    assert np.abs(diff).max() < 0.25 * 255


def test_splits_independent():
    a = make_splits(200, 100, 0)
    b = make_splits(350, 100, 0)
    assert set(a) == {"train", "test"}
    # Changing n_train leaves the test split untouched.
    assert a["test"][0].tobytes() == b["test"][0].tobytes()
    assert a["test"][1].tobytes() == b["test"][1].tobytes()
    # Train and test come from different streams.
    assert not np.array_equal(a["train"][0][:100], a["test"][0])
    # Keyword arguments are forwarded; the seed matters.
    c = make_splits(200, 100, 0, noise=0.0)
    assert not np.array_equal(c["test"][0], a["test"][0])
    assert np.array_equal(c["test"][1], a["test"][1])
    d = make_splits(200, 100, 1)
    assert not np.array_equal(d["test"][0], a["test"][0])
    # The splits are the module's own generator applied to spawned streams.
    train_ss, test_ss = np.random.SeedSequence(0).spawn(2)
    assert generate_shapes(100, test_ss)[0].tobytes() == a["test"][0].tobytes()


def test_noise_free_background_is_exactly_plain(clean):
    images, _ = clean
    corners = _corners(images)
    # The four corners always lie outside the shape and share one colour ...
    assert (corners == corners[:, :1]).all()
    bg = corners[:, 0]
    # ... which is the most common colour of the image: a flat background
    # covering a good part of the frame (the shape at most ~60% of it).
    is_bg = (images == bg[:, None, None, :]).all(-1)
    frac = is_bg.mean(axis=(1, 2))
    assert frac.min() > 0.3
    # The whole outer ring of pixels is background.
    border = np.ones((32, 32), dtype=bool)
    border[1:-1, 1:-1] = False
    assert is_bg[:, border].all()


def test_noisy_background_is_plain_up_to_noise(noisy):
    images, _ = noisy
    # 3x3 patches at the corners are always background: their spread is the
    # pixel noise only (std 0.03 * 255 ~ 7.7, a little less where clipped),
    # whereas the colour contrast to any shape pixel is >= 0.4 * 255 in luma.
    patches = np.concatenate(
        [images[:, :3, :3], images[:, :3, -3:], images[:, -3:, :3], images[:, -3:, -3:]], axis=1
    ).astype(float)
    std = patches.reshape(len(images), -1, 3).std(axis=1)  # (n, 3): 36 pixels each
    assert std.max() < 0.06 * 255
    assert 0.02 * 255 < np.median(std) < 0.035 * 255


def test_foreground_background_contrast(clean):
    images, _ = clean
    bg = _corners(images)[:, 0] / 255.0
    luma = luminance(images / 255.0)  # (n, 32, 32)
    contrast = np.abs(luma - luminance(bg)[:, None, None]).max(axis=(1, 2))
    # Fully covered pixels have exactly the foreground colour.
    assert contrast.min() >= MIN_LUMA_CONTRAST - 0.01
    # Every image shows a shape of reasonable size (at least ~5% of pixels).
    is_fg = np.abs(luma - luminance(bg)[:, None, None]) > MIN_LUMA_CONTRAST / 2
    assert is_fg.mean(axis=(1, 2)).min() > 0.05


def test_rotation_zero_is_upright():
    """With rotation=0 a square is axis-aligned: its mask is a rectangle."""
    images, labels = generate_shapes(200, 2, noise=0.0, rotation=0.0)
    sq = images[labels == CLASSES.index("square")]
    for img in sq:
        bg = img[0, 0]
        fg_mask = (np.abs(img.astype(int) - bg.astype(int)).sum(-1)) > 0
        rows, cols = np.flatnonzero(fg_mask.any(1)), np.flatnonzero(fg_mask.any(0))
        box = fg_mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert box.mean() > 0.95  # only anti-aliased edges can be partial


def test_tiny_cnn_learns():
    """A 2-conv CNN trained for a few seconds is far above chance (10%)."""
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    torch.manual_seed(0)
    n_threads = torch.get_num_threads()
    # One thread: this net is too small to gain from two, and with several
    # threads a busy machine (another process on a core) slows every step
    # ~10x as the threads wait on each other.
    torch.set_num_threads(1)
    try:
        splits = make_splits(3000, 500, 0)

        def to_tensor(split):
            x, y = split
            return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).contiguous(), torch.from_numpy(y)

        xtr, ytr = to_tensor(splits["train"])
        xte, yte = to_tensor(splits["test"])
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
        )
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(3):
            perm = torch.randperm(len(xtr))
            for i in range(0, len(xtr), 64):
                idx = perm[i : i + 64]
                loss = F.cross_entropy(model(xtr[idx] - 0.5), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xte - 0.5).argmax(1) == yte).float().mean().item()
    finally:
        torch.set_num_threads(n_threads)
    assert acc >= 0.6, f"test accuracy {acc:.3f}"
