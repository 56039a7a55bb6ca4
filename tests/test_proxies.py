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
import torch
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
