"""Perceptual proxies: agreement with reference implementations, shapes,
gradients, and the LPIPS weight handling offline (nothing touches the network:
every test that could download patches ``urllib.request.urlopen`` to fail)."""

from __future__ import annotations

import hashlib
import io
import math
import urllib.error
import urllib.request

import lpips
import numpy as np
import pytest
import pytorch_msssim
import scipy.signal
import torch
import torch.nn.functional as F
import torchvision
from skimage.metrics import structural_similarity

from iri_alignment import proxies
from iri_alignment.proxies import (
    LPIPS_PROXIES,
    OFFLINE_PROXIES,
    PROXIES,
    MSSSIMProxy,
    ProxyWeightsError,
    get_proxy,
    paired,
    pairwise,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _structured(size: int = 32) -> torch.Tensor:
    """Three (1,3,size,size) images with edges, gradients and texture in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    checker = (((xx * 8).floor() + (yy * 8).floor()) % 2).float()
    disc = ((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.08).float()
    rings = 0.5 + 0.5 * torch.sin(30 * ((xx - 0.3) ** 2 + (yy - 0.6) ** 2))
    return torch.stack(
        [
            torch.stack([xx, yy, checker]),
            torch.stack([disc, 0.3 * disc + 0.2, rings]),
            torch.stack([rings, checker * 0.7, xx * yy]),
        ]
    )


def _noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions on one thread: with the cores shared, two threads run far slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def offline_network(tmp_path, monkeypatch):
    """Point the torch hub cache at tmp and make every download fail with URLError."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return tmp_path / "hub" / "checkpoints"


# --------------------------------------------------------------------- registry


def test_names_and_unknown_proxy():
    assert PROXIES == ("lpips-alex", "lpips-vgg", "lpips-alex-base", "lpips-vgg-base", "ssim", "ms-ssim", "l2")
    assert set(LPIPS_PROXIES) | set(OFFLINE_PROXIES) == set(PROXIES)
    with pytest.raises(ValueError, match="unknown proxy"):
        get_proxy("lpips-squeeze")


@pytest.mark.parametrize("name", OFFLINE_PROXIES)
def test_offline_proxy_is_frozen_eval_module(name):
    proxy = get_proxy(name)
    assert proxy.name == name
    assert isinstance(proxy, torch.nn.Module)
    proxy.train()
    assert not proxy.training
    assert not any(p.requires_grad for p in proxy.parameters())


# --------------------------------------------------------------------- SSIM family


@pytest.mark.parametrize("case", ["random", "structured", "structured-vs-noise"])
def test_ssim_agrees_with_scikit_image(case):
    if case == "random":
        x, y = _rand(3, 3, 32, 32, seed=0), _rand(3, 3, 32, 32, seed=1)
    elif case == "structured":
        x = _structured()
        y = _noisy(x, 0.1)
    else:
        x, y = _structured(), _rand(3, 3, 32, 32, seed=2)
    d = get_proxy("ssim")(x, y)
    ref = [
        1.0
        - structural_similarity(
            x[i].permute(1, 2, 0).double().numpy(),
            y[i].permute(1, 2, 0).double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        for i in range(len(x))
    ]
    np.testing.assert_allclose(d.numpy(), ref, atol=1e-3)


@pytest.mark.parametrize("name", OFFLINE_PROXIES)
def test_distance_is_zero_for_identical_images_and_grows_with_noise(name):
    proxy = get_proxy(name)
    x = 0.25 + 0.5 * _structured()  # stays inside [0, 1] under the noise below
    torch.testing.assert_close(proxy(x, x), torch.zeros(3), atol=1e-6, rtol=0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    d = torch.stack([proxy(x, x + s * noise) for s in (0.02, 0.05, 0.1, 0.2)])  # (levels, N)
    assert (d[1:] > d[:-1]).all(), d


def test_ms_ssim_scales_fit_32_and_224_pixels():
    proxy = get_proxy("ms-ssim")
    assert proxy.scales(32) == 3
    assert proxy.scales(224) == 5
    for size in (32, 224):
        x = _structured(size)
        d = proxy(x, _noisy(x, 0.1))
        assert d.shape == (3,)
        assert torch.isfinite(d).all() and (d > 0).all() and (d < 1).all()
    with pytest.raises(ValueError, match="smaller than"):
        proxy(_rand(1, 3, 6, 6), _rand(1, 3, 6, 6, seed=1))


def test_ms_ssim_equals_pytorch_msssim_in_the_standard_configuration():
    """With the standard window and five scales, the proxy is the library's MS-SSIM."""
    x = _rand(2, 3, 176, 176)
    y = _noisy(x, 0.2)
    weights = np.array(proxies.MS_SSIM_WEIGHTS) / sum(proxies.MS_SSIM_WEIGHTS)
    ours = MSSSIMProxy(win_size=11)(x, y)
    ref = 1 - pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False, weights=weights.tolist())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


# Wang, Simoncelli & Bovik (2003): the exponents of the five scales, finest first
PUBLISHED_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gaussian_taps(win_size: int = 7, win_sigma: float = 1.5) -> np.ndarray:
    """The 1-D Gaussian window in float64, normalised to sum 1."""
    taps = np.arange(win_size) - win_size // 2
    g = np.exp(-(taps**2) / (2 * win_sigma**2))
    return g / g.sum()


def _ms_ssim_float64() -> MSSSIMProxy:
    """The 32 px proxy with its window in exact float64.

    The proxy builds its window in float32 (sum 1 + 4e-8 in float64), and the variance
    E[x^2] - mu^2 magnifies that by mu^2 / C2 (up to ~1e3): in float64 the stock proxy
    differs from the exact formulas by up to ~1e-5 on flat images, which would hide a
    real error in the comparisons below. The float32 proxy, as used, is compared too.
    """
    proxy = get_proxy("ms-ssim")
    proxy.window = torch.from_numpy(_gaussian_taps(proxy.win_size, proxy.win_sigma)).view(1, 1, 1, -1)
    return proxy


def _ms_ssim_distance_reference(x: np.ndarray, y: np.ndarray, *, win_size: int = 7, win_sigma: float = 1.5,
                                weights=PUBLISHED_MS_SSIM_WEIGHTS, K=(0.01, 0.03), data_range: float = 1.0) -> float:
    """1 - MS-SSIM of two (C, H, W) float64 images, from the published formulas in NumPy/SciPy,
    configured as :class:`MSSSIMProxy` documents it.

    Per scale j = 1..M, with a ``win_size``-tap Gaussian window of std ``win_sigma``
    (normalised to sum 1, applied without padding: "valid"), local means mu, population
    variances sigma^2 = E[x^2] - mu^2 and covariance sigma_xy:

        l_j  = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)         (luminance)
        cs_j = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)    (contrast * structure, C3 = C2 / 2)

    C1 = (K1 L)^2, C2 = (K2 L)^2, L = data_range. MS-SSIM per channel is
    mean(l_M cs_M)^beta_M * prod_{j<M} mean(cs_j)^beta_j, each mean clamped at 0; the
    luminance enters at the coarsest scale M only. Scale j+1 is scale j averaged over
    2x2 blocks; M counts the scales whose side is at least the window, at most 5; beta
    is the first M published weights renormalised to sum 1. Channels are averaged.
    """
    g = _gaussian_taps(win_size, win_sigma)
    window = np.outer(g, g)
    c1, c2 = (K[0] * data_range) ** 2, (K[1] * data_range) ** 2
    sides, side = [], min(x.shape[-2:])
    while len(sides) < len(weights) and side >= win_size:
        sides.append(side)
        side = math.ceil(side / 2)
    m = len(sides)
    beta = np.asarray(weights[:m], dtype=np.float64) / np.sum(weights[:m])

    def local(im):
        return scipy.signal.correlate2d(im, window, mode="valid")

    def halve(im):
        h, w = im.shape
        assert h % 2 == 0 and w % 2 == 0, "the reference halves even sides only"
        return im.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    per_channel = []
    for a, b in zip(x, y):
        value = 1.0
        for j in range(m):
            mu_a, mu_b = local(a), local(b)
            var_a, var_b = local(a * a) - mu_a**2, local(b * b) - mu_b**2
            cov = local(a * b) - mu_a * mu_b
            cs = (2 * cov + c2) / (var_a + var_b + c2)
            if j < m - 1:
                value *= max(cs.mean(), 0.0) ** beta[j]
                a, b = halve(a), halve(b)
            else:
                luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
                value *= max((luminance * cs).mean(), 0.0) ** beta[j]
        per_channel.append(value)
    return 1.0 - float(np.mean(per_channel))


def _ms_ssim_32px_pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random and structured 32 px image pairs, (N, 3, 32, 32) each."""
    structured = _structured()
    return {
        "random-vs-noisy": (_rand(3, 3, 32, 32, seed=4), _noisy(_rand(3, 3, 32, 32, seed=4), 0.1, seed=5)),
        "random-vs-very-noisy": (_rand(3, 3, 32, 32, seed=6), _noisy(_rand(3, 3, 32, 32, seed=6), 0.4, seed=7)),
        "structured-vs-noisy": (structured, _noisy(structured, 0.05)),
        "structured-vs-other-structured": (structured, structured.roll(1, dims=0)),
        "structured-vs-blurred": (structured, F.avg_pool2d(structured, 3, stride=1, padding=1, count_include_pad=False)),
        "structured-vs-negative": (structured, 1 - structured),  # some cs < 0: clamped, distance 1
    }


def test_ms_ssim_32px_configuration_is_the_documented_one():
    proxy = get_proxy("ms-ssim")
    assert (proxy.win_size, proxy.win_sigma, proxy.K) == (7, 1.5, (0.01, 0.03))
    assert proxies.MS_SSIM_WEIGHTS == PUBLISHED_MS_SSIM_WEIGHTS
    np.testing.assert_allclose(proxy.window.squeeze().double().numpy(), _gaussian_taps(), rtol=0, atol=1e-7)
    assert proxy.scales(32) == 3  # 32, 16, 8 px; 4 px is below the window
    beta = np.array(PUBLISHED_MS_SSIM_WEIGHTS[:3]) / sum(PUBLISHED_MS_SSIM_WEIGHTS[:3])
    np.testing.assert_allclose(beta, [0.0711, 0.4530, 0.4760], atol=1e-4)  # the docstring's 32 px weights


@pytest.mark.parametrize("case", list(_ms_ssim_32px_pairs()))
def test_ms_ssim_at_32_px_matches_a_numpy_reference_of_the_published_formulas(case):
    x, y = _ms_ssim_32px_pairs()[case]
    ref = np.array([_ms_ssim_distance_reference(a.double().numpy(), b.double().numpy()) for a, b in zip(x, y)])
    np.testing.assert_allclose(_ms_ssim_float64()(x.double(), y.double()).numpy(), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(get_proxy("ms-ssim")(x, y).numpy(), ref, rtol=0, atol=2e-5)  # float32, as used
    if case == "structured-vs-negative":
        assert (ref == 1.0).any()


def test_ms_ssim_at_32_px_by_hand():
    proxy = _ms_ssim_float64()
    beta_coarsest = 0.3001 / (0.0448 + 0.2856 + 0.3001)
    c1 = 0.01**2
    # identical images: every l and cs is 1, the distance 0
    x = _structured()
    torch.testing.assert_close(proxy(x.double(), x.double()), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(get_proxy("ms-ssim")(x, x), torch.zeros(3), atol=1e-6, rtol=0)  # float32, as used
    # flat images a and a + c: zero variances give cs = C2 / C2 = 1 at every scale, so only the
    # coarsest scale's luminance l = (2a(a + c) + C1) / (a^2 + (a + c)^2 + C1) is left
    for a, c in ((0.4, 0.1), (0.2, 0.5), (0.9, -0.3)):
        flat = torch.full((1, 3, 32, 32), a, dtype=torch.float64)
        luminance = (2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1)
        expected = 1 - luminance**beta_coarsest
        torch.testing.assert_close(proxy(flat, flat + c), torch.full((1,), expected, dtype=torch.float64),
                                   atol=1e-12, rtol=0)
    # a constant offset of a structured image changes the luminance only: cs = 1 at every
    # scale, and the distance is 1 - mean(l_M)^beta_M at the coarsest (8 px) scale
    x = 0.2 + 0.5 * _structured().double()
    offset = 0.15
    coarse = F.avg_pool2d(F.avg_pool2d(x, 2), 2)  # 32 -> 16 -> 8 px
    g = torch.from_numpy(_gaussian_taps())
    window = torch.outer(g, g).expand(3, 1, 7, 7)
    mu = F.conv2d(coarse, window, groups=3)  # (N, 3, 2, 2): local means at the coarsest scale
    luminance = (2 * mu * (mu + offset) + c1) / (mu**2 + (mu + offset) ** 2 + c1)
    expected = 1 - (luminance.flatten(2).mean(-1) ** beta_coarsest).mean(1)
    torch.testing.assert_close(proxy(x, x + offset), expected, atol=1e-12, rtol=0)
    assert (proxy(x, x + offset) > 0).all()


def test_l2_is_root_mean_square_difference():
    x, y = _rand(2, 3, 8, 8), _rand(2, 3, 8, 8, seed=1)
    expected = ((x - y) ** 2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(get_proxy("l2")(x, y), expected)


# --------------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def proxy_cache():
    """``get(name)``: each proxy built once per module, LPIPS on a random trunk (no ImageNet weights)."""
    cache: dict[str, proxies.Proxy] = {}

    def get(name: str) -> proxies.Proxy:
        if name not in cache:
            cache[name] = get_proxy(name, pretrained=False)
        return cache[name]

    return get


@pytest.fixture(params=LPIPS_PROXIES)
def lpips_proxy(request, proxy_cache):
    return proxy_cache(request.param)


def test_lpips_random_trunk_runs_end_to_end(lpips_proxy):
    x = _structured()
    y = _noisy(x, 0.2)
    d = lpips_proxy(x, y)
    assert d.shape == (3,)
    assert torch.isfinite(d).all() and (d > 0).all()
    assert lpips_proxy(x, x).abs().max() < 1e-6
    raw = lpips_proxy.lpips(2 * x - 1, 2 * y - 1)  # lpips itself expects [-1, 1]
    torch.testing.assert_close(d, raw.flatten())
    torch.testing.assert_close(lpips_proxy(x, y), d, atol=0, rtol=0)  # deterministic
    lpips_proxy.train()  # e.g. a parent module switching to training: dropout must stay off
    assert not any(m.training for m in lpips_proxy.modules())
    torch.testing.assert_close(lpips_proxy(x, y), d, atol=0, rtol=0)
    assert not any(p.requires_grad for p in lpips_proxy.parameters())


def test_lpips_variants_use_calibrated_layers_or_none(lpips_proxy):
    trunk = lpips_proxy.lpips.pnet_type
    if lpips_proxy.name.endswith("-base"):
        assert not lpips_proxy.lpips.lpips and not hasattr(lpips_proxy.lpips, "lin0")
        return
    shipped = torch.load(f"{lpips.__path__[0]}/weights/v0.1/{trunk}.pth", map_location="cpu", weights_only=True)
    state = lpips_proxy.lpips.state_dict()
    assert len(shipped) == 5
    for key, value in shipped.items():
        torch.testing.assert_close(state[key], value, atol=0, rtol=0)


def test_random_trunk_is_reproducible_silent_and_leaves_global_rng_alone(capsys):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = get_proxy("lpips-alex", pretrained=False)
    assert capsys.readouterr().out == ""  # lpips prints on construction unless told not to
    assert torch.equal(torch.rand(1), expected_next)
    b = get_proxy("lpips-alex", pretrained=False)
    assert torch.equal(a.lpips.net.slice1[0].weight, b.lpips.net.slice1[0].weight)


@pytest.mark.parametrize("trunk, file_name", [("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")])
def test_missing_trunk_weights_offline_raise_a_helpful_error(offline_network, trunk, file_name):
    name = f"lpips-{trunk}"
    with pytest.raises(ProxyWeightsError) as info:
        get_proxy(name)
    message = str(info.value)
    assert file_name in message
    assert f"https://download.pytorch.org/models/{file_name}" in message
    assert str(offline_network) in message
    assert "URLError" in message
    assert not offline_network.exists() or not any(offline_network.iterdir())  # no partial file left
    with pytest.raises(ProxyWeightsError, match=file_name):
        proxies.load_trunk_weights(trunk, download=False)


def test_hand_placed_trunk_weights_load(offline_network):
    torch.manual_seed(0)
    state = torchvision.models.alexnet().state_dict()  # a full torchvision file, classifier included
    offline_network.mkdir(parents=True)
    torch.save(state, offline_network / "alexnet-owt-7be5be79.pth")
    proxy = get_proxy("lpips-alex")  # downloads are refused, so this must read the cache
    trunk = proxy.lpips.net
    torch.testing.assert_close(trunk.slice1[0].weight, state["features.0.weight"], atol=0, rtol=0)
    torch.testing.assert_close(getattr(trunk.slice5, "10").bias, state["features.10.bias"], atol=0, rtol=0)
    x = _structured()
    assert torch.isfinite(proxy(x, _noisy(x, 0.1))).all()


def test_unreadable_or_mismatched_trunk_weights_raise(offline_network):
    offline_network.mkdir(parents=True)
    path = offline_network / "alexnet-owt-7be5be79.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ProxyWeightsError, match="cannot read"):
        get_proxy("lpips-alex")
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ProxyWeightsError, match="lack"):
        get_proxy("lpips-alex")


def test_download_checks_the_hash_in_the_file_name(tmp_path, monkeypatch):
    payload = b"some weights"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    good = tmp_path / f"net-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    proxies._download("https://example.invalid/net.pth", good, timeout=1.0)
    assert good.read_bytes() == payload
    bad = tmp_path / "net-00000000.pth"
    with pytest.raises(ValueError, match="SHA-256"):
        proxies._download("https://example.invalid/net.pth", bad, timeout=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # neither the file nor a .partial


# --------------------------------------------------------------------- every proxy


@pytest.fixture(params=PROXIES)
def any_proxy(request, proxy_cache):
    return proxy_cache(request.param)


def test_gradients_flow_to_x(any_proxy):
    target = _structured()
    x = _noisy(target, 0.3).requires_grad_(True)
    any_proxy(x, target).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    x.grad = None
    any_proxy(x, x.detach()).sum().backward()  # at d = 0: finite (l2's sqrt, SSIM's ratios)
    assert torch.isfinite(x.grad).all()


def test_single_y_is_compared_with_every_x(any_proxy):
    x, seed = _structured(), _rand(1, 3, 32, 32)
    torch.testing.assert_close(any_proxy(x, seed), any_proxy(x, seed.expand(3, -1, -1, -1)))
    with pytest.raises(ValueError, match="expected x"):
        any_proxy(x, _rand(2, 3, 32, 32))


# --------------------------------------------------------------------- batched helpers


def test_pairwise_and_paired_match_direct_calls():
    proxy = get_proxy("ssim")
    queries, candidates = _structured(), torch.cat([_rand(4, 3, 32, 32), _structured()[:1]])
    full = pairwise(proxy, queries, candidates, batch_size=4)
    assert full.shape == (3, 5) and not full.requires_grad
    for q in range(3):
        torch.testing.assert_close(full[q], proxy(queries[q : q + 1].expand(5, -1, -1, -1), candidates))
    assert full[0, 4] == 0  # query 0 is candidate 4
    index = torch.tensor([[4, 0, 1], [2, 2, 3], [0, 1, 4]])
    torch.testing.assert_close(pairwise(proxy, queries, candidates, batch_size=2, index=index), full.gather(1, index))
    torch.testing.assert_close(paired(proxy, queries, candidates[:3], batch_size=2), proxy(queries, candidates[:3]))
    torch.testing.assert_close(paired(proxy, queries, candidates[:1]), full[:, 0])


def test_l2_pairwise_is_scaled_euclidean_distance():
    q, c = _rand(4, 3, 8, 8), _rand(6, 3, 8, 8, seed=1)
    expected = torch.cdist(q.flatten(1), c.flatten(1)) / math.sqrt(3 * 8 * 8)
    torch.testing.assert_close(pairwise(get_proxy("l2"), q, c, batch_size=5), expected)


def test_ms_ssim_saturates_at_one_with_zero_not_nan_gradient():
    """An image against its negative has cs < 0: MS-SSIM clamps to 0, the distance to 1."""
    target = _structured()
    x = (1 - target).requires_grad_(True)
    d = get_proxy("ms-ssim")(x, target)
    torch.testing.assert_close(d.detach(), torch.ones(3))
    d.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad == 0).all()
