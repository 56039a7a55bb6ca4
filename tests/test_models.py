"""Tests of iri_alignment.models: shapes, normalisation, fake ReLU, registry, weights."""

from __future__ import annotations

import copy
import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from iri_alignment.data.specs import get_spec
from iri_alignment.models import (
    ARCHITECTURES,
    FakeReLU,
    ImageClassifier,
    ModelWeightsError,
    build_model,
    describe_model,
)

CIFAR_ARCHS = ARCHITECTURES["cifar"]
SMALL = 0.125  # width used for every forward/backward pass on CIFAR archs
RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = "https://download.pytorch.org/models/" + RESNET18_FILE

_MODELS: dict[tuple, ImageClassifier] = {}


def small_model(arch: str, dataset: str = "cifar10") -> ImageClassifier:
    """A seeded width-0.125 model in eval mode, built once per session (do not modify it)."""
    key = (dataset, arch)
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = build_model(dataset, arch, width=SMALL).eval()
    return _MODELS[key]


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest single-threaded; OpenMP on a busy 2-core machine can be 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A torch hub cache under tmp_path; any download attempt fails as if offline."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hub / "checkpoints"


# ---------------------------------------------------------------------------
# Registry and sizes (no forward pass).

EXPECTED_REP = {
    ("cifar10", "resnet18"): 512,
    ("cifar10", "vgg16"): 512,
    ("cifar10", "densenet121"): 1024,
    ("cifar10", "inceptionv3"): 2048,
    ("imagenet", "resnet18"): 512,
    ("imagenet", "resnet50"): 2048,
    ("imagenet", "vgg16"): 4096,
}


@pytest.mark.parametrize(("dataset", "arch"), list(EXPECTED_REP))
def test_describe_model_rep_dim_at_width_1(dataset, arch):
    spec = get_spec(dataset)
    info = describe_model(dataset, arch)
    assert info["rep_dim"] == EXPECTED_REP[(dataset, arch)]
    assert set(info) == {"dataset", "arch", "width", "family", "num_classes", "input_size", "rep_dim", "num_params"}
    assert (info["dataset"], info["arch"], info["width"], info["family"]) == (dataset, arch, 1.0, spec.family)
    assert info["num_classes"] == spec.num_classes and info["input_size"] == spec.image_size
    assert isinstance(info["num_params"], int) and info["num_params"] > 1_000_000


def test_describe_model_param_counts_match_references():
    # Kuang Liu's CIFAR ResNet18 and torchvision's ImageNet models have well-known sizes.
    assert describe_model("cifar10", "resnet18")["num_params"] == 11_173_962
    assert describe_model("imagenet", "resnet18")["num_params"] == 11_689_512
    assert describe_model("imagenet", "resnet50")["num_params"] == 25_557_032
    assert describe_model("imagenet", "vgg16")["num_params"] == 138_365_992


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_width_scaling_reduces_parameters(arch):
    sizes = [describe_model("cifar10", arch, w) for w in (1.0, 0.5, 0.25, 0.0625)]
    params = [s["num_params"] for s in sizes]
    assert params == sorted(params, reverse=True) and len(set(params)) == 4
    assert sizes[1]["rep_dim"] == sizes[0]["rep_dim"] // 2


def test_describe_model_matches_built_model():
    info = describe_model("cifar100", "densenet121", SMALL)
    model = build_model("cifar100", "densenet121", width=SMALL)
    assert info["num_params"] == sum(p.numel() for p in model.parameters())
    assert (info["rep_dim"], info["num_classes"]) == (model.rep_dim, model.num_classes) == (128, 100)
    assert (model.arch, model.dataset, model.width) == ("densenet121", "cifar100", SMALL)


def test_unknown_arch_dataset_and_bad_width_raise():
    with pytest.raises(ValueError, match="densenet121") as err:
        build_model("cifar10", "resnet50")
    assert "inceptionv3" in str(err.value)
    with pytest.raises(ValueError, match="resnet50"):
        build_model("imagenet", "densenet121")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_model("mnist", "resnet18")
    with pytest.raises(ValueError, match="width"):
        build_model("imagenet", "resnet18", width=0.5)
    with pytest.raises(ValueError, match="width"):
        describe_model("imagenet", "vgg16", width=2.0)
    with pytest.raises(ValueError, match="width"):
        describe_model("cifar10", "resnet18", width=0.0)
    with pytest.raises(ValueError, match="pretrained"):
        build_model("cifar10", "resnet18", pretrained=True)


# ---------------------------------------------------------------------------
# Forward pass, representation, normalisation.


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_cifar_forward_shapes(arch):
    model = small_model(arch, "cifar100")
    x = images()
    with torch.no_grad():
        logits, rep = model(x, with_rep=True)
        assert logits.shape == (2, 100)
        assert rep.shape == (2, describe_model("cifar100", arch, SMALL)["rep_dim"]) == (2, model.rep_dim)
        assert torch.allclose(model(x), logits, atol=1e-6)
        assert torch.allclose(model.represent(x), rep, atol=1e-6)
        assert torch.allclose(model.backbone.fc(rep), logits, atol=1e-6)
    assert (rep >= 0).all() or arch == "inceptionv3"  # pooled after a ReLU (Inception: dropout, eval = identity)


def test_model_normalises_inside_with_buffers():
    model = small_model("resnet18")
    spec = get_spec("cifar10")
    x = images()
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    buffers = dict(model.named_buffers())
    assert torch.equal(buffers["mean"], mean) and torch.equal(buffers["std"], std)
    assert not any(k in model.state_dict() for k in ("mean", "std"))
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(logits, model.backbone.fc(model.backbone.features((x - mean) / std, False)), atol=1e-5)
        assert not torch.allclose(logits, model.backbone.fc(model.backbone.features(x, False)), atol=1e-3)
        # With identity normalisation, feeding pre-normalised images gives the same logits.
        plain = copy.deepcopy(model)
        plain.mean.zero_()
        plain.std.fill_(1.0)
        assert torch.allclose(plain((x - mean) / std), logits, atol=1e-5)
        assert torch.allclose(model((x - mean) / std, normalize=False), logits, atol=1e-5)
        assert torch.allclose(model.represent((x - mean) / std, normalize=False), model.represent(x), atol=1e-5)
    # Buffers follow .to(): a float64 copy still works and normalises in float64.
    double = copy.deepcopy(model).to(torch.float64)
    assert double.mean.dtype == torch.float64
    with torch.no_grad():
        assert torch.allclose(double(x.double()).float(), logits, atol=1e-4)


def test_imagenet_resnet18_forward_and_fake_relu():
    torch.manual_seed(0)
    model = build_model("imagenet", "resnet18").eval()
    x = images(1, 64).requires_grad_(True)
    logits, rep = model(x, with_rep=True)
    assert logits.shape == (1, 1000) and rep.shape == (1, 512) and model.rep_dim == 512
    assert torch.allclose(model.backbone.fc(rep), logits, atol=1e-5)
    _check_fake_relu(model, lambda b: b.net.layer4[-1].bn2, x)


# ---------------------------------------------------------------------------
# Fake ReLU.


def test_fake_relu_forward_is_relu_and_gradient_is_identity():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    y = FakeReLU.apply(x)
    assert torch.equal(y, torch.relu(x.detach()))
    upstream = torch.tensor([1.0, -2.0, 3.0, 4.0, -5.0])
    (grad,) = torch.autograd.grad(y, x, upstream)
    assert torch.equal(grad, upstream)  # a real ReLU would give [0, 0, 0, 4, -5]
    (real_grad,) = torch.autograd.grad(torch.relu(x), x, upstream)
    assert not torch.equal(real_grad, grad)


def test_fake_relu_works_under_torch_func_vmap_and_grad():
    """Stacked replicate models (torch.func.vmap) can invert through the fake ReLU."""
    x = torch.tensor([[-1.0, 2.0], [3.0, -4.0], [0.5, -0.5]])
    assert torch.equal(torch.func.vmap(FakeReLU.apply)(x), x.clamp(min=0))
    grads = torch.func.vmap(torch.func.grad(lambda v: (FakeReLU.apply(v) * torch.tensor([1.0, 2.0])).sum()))(x)
    assert torch.equal(grads, torch.tensor([[1.0, 2.0]] * 3))  # identity Jacobian, also where x < 0


def _check_fake_relu(model: ImageClassifier, last_affine, x: torch.Tensor) -> None:
    """Switch off rep unit 0 by a huge negative bias before the last ReLU, then compare gradients.

    ``last_affine(backbone)`` is the layer (BN or linear) whose output channel 0
    feeds rep unit 0 through the last ReLU. With the real ReLU that unit is 0
    everywhere, so its gradient wrt the input is exactly 0; with the fake ReLU
    the same value must still pass gradient.
    """
    model = copy.deepcopy(model).eval().requires_grad_(False)  # gradients wrt the input only
    with torch.no_grad():
        last_affine(model.backbone).bias[0] = -1e4
    x = x.detach().clone().requires_grad_(True)
    logits_real, rep_real = model(x, with_rep=True)
    logits_fake, rep_fake = model(x, with_rep=True, fake_relu=True)
    assert torch.equal(rep_real, rep_fake) and torch.equal(logits_real, logits_fake)
    assert (rep_real[:, 0] == 0).all()
    (g_real,) = torch.autograd.grad(rep_real[:, 0].sum(), x, retain_graph=True)
    (g_fake,) = torch.autograd.grad(rep_fake[:, 0].sum(), x)
    assert g_real.abs().max() == 0
    assert g_fake.abs().max() > 0
    # Units that are on get gradient either way.
    (g_on,) = torch.autograd.grad(rep_real[:, 1:].sum(), x)
    assert g_on.abs().max() > 0


LAST_BN = {  # the batch norm feeding channel 0 of the last (fakeable) ReLU
    "resnet18": lambda b: b.layer4[-1].bn2,
    "vgg16": lambda b: [m for m in b.body if isinstance(m, torch.nn.BatchNorm2d)][-1],
    "densenet121": lambda b: b.bn,
    "inceptionv3": lambda b: b.Mixed_7c.branch1x1.bn,
}


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_cifar_fake_relu_passes_gradient_where_relu_blocks_it(arch):
    _check_fake_relu(small_model(arch), LAST_BN[arch], images())


def _graph_nodes(tensor: torch.Tensor, depth: int) -> list[str]:
    """Names of the autograd nodes within ``depth`` steps of ``tensor``."""
    names, frontier = [], [tensor.grad_fn]
    for _ in range(depth):
        frontier = [n for n in frontier if n is not None]
        names += [type(n).__name__ for n in frontier]
        frontier = [nxt for n in frontier for nxt, _ in n.next_functions]
    return names


@pytest.mark.parametrize(("arch", "rep_dim", "depth"), [("resnet50", 2048, 3), ("vgg16", 4096, 1)])
def test_imagenet_fake_relu_sits_right_before_the_representation(arch, rep_dim, depth):
    # Built and run on the meta device: shapes and autograd graph only, no compute.
    with torch.device("meta"):
        model = build_model("imagenet", arch).eval()
        x = torch.empty(1, 3, 224, 224)
    fc = model.backbone.net.fc if arch == "resnet50" else model.backbone.net.classifier[6]
    assert model.backbone.fc is fc and model.rep_dim == rep_dim
    logits, rep = model(x, with_rep=True, fake_relu=True)
    assert logits.shape == (1, 1000) and rep.shape == (1, rep_dim)
    assert any("FakeReLU" in n for n in _graph_nodes(rep, depth))
    assert not any("FakeReLU" in n for n in _graph_nodes(model.represent(x), 50))


@pytest.mark.parametrize("block_type", ["BasicBlock", "Bottleneck"])
def test_torchvision_last_block_reimplementation_matches_torchvision(block_type):
    from torchvision.models import resnet

    from iri_alignment.models.imagenet import _last_block

    torch.manual_seed(0)
    block_cls = getattr(resnet, block_type)
    planes = 8
    down = torch.nn.Sequential(torch.nn.Conv2d(16, planes * block_cls.expansion, 1, 2), torch.nn.BatchNorm2d(planes * block_cls.expansion))
    block = block_cls(16, planes, stride=2, downsample=down).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(_last_block(block, x, False), block(x), atol=1e-6)
        assert torch.allclose(_last_block(block, x, True), block(x), atol=1e-6)


# ---------------------------------------------------------------------------
# Weights: download errors, hand-placed cache files, local files.


def test_pretrained_offline_raises_weights_error_naming_file_and_folder(offline_hub):
    with pytest.raises(ModelWeightsError) as err:
        build_model("imagenet", "resnet18", pretrained=True)
    message = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert RESNET18_FILE in message and RESNET18_URL in message and str(offline_hub) in message
    assert not (offline_hub / RESNET18_FILE).exists()


def test_pretrained_loads_a_file_placed_by_hand_in_the_cache(offline_hub):
    reference = torchvision.models.resnet18(weights=None).state_dict()
    offline_hub.mkdir(parents=True)
    torch.save(reference, offline_hub / RESNET18_FILE)
    model = build_model("imagenet", "resnet18", pretrained=True)
    loaded = model.backbone.net.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_pretrained_with_a_corrupt_cached_file_says_so(offline_hub):
    offline_hub.mkdir(parents=True)
    (offline_hub / RESNET18_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ModelWeightsError, match="unreadable") as err:
        build_model("imagenet", "resnet18", pretrained=True)
    assert str(offline_hub / RESNET18_FILE) in str(err.value) and RESNET18_URL in str(err.value)


def test_no_download_without_pretrained(offline_hub, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)
    build_model("imagenet", "resnet18")
    describe_model("imagenet", "vgg16")
    assert not offline_hub.exists() or not any(offline_hub.iterdir())


def test_weights_path_robustness_library_checkpoint(tmp_path):
    reference = torchvision.models.resnet18(weights=None).state_dict()
    checkpoint = {
        "model": {
            "module.normalizer.new_mean": torch.zeros(3, 1, 1),
            "module.normalizer.new_std": torch.ones(3, 1, 1),
            **{f"module.model.{k}": v for k, v in reference.items()},
            **{f"module.attacker.model.{k}": torch.zeros_like(v) for k, v in reference.items()},
            "module.attacker.normalize.new_mean": torch.zeros(3, 1, 1),
        },
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 90,
    }
    path = tmp_path / "imagenet_l2_3_0.pt"
    torch.save(checkpoint, path)
    model = build_model("imagenet", "resnet18", weights_path=str(path))
    loaded = model.backbone.net.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


@pytest.mark.parametrize("fmt", ["plain", "wrapper", "state_dict_dataparallel"])
def test_weights_path_formats_round_trip(tmp_path, fmt):
    torch.manual_seed(1)
    source = build_model("cifar10", "resnet18", width=SMALL)
    plain = source.backbone.state_dict()
    payload = {
        "plain": plain,
        "wrapper": source.state_dict(),
        "state_dict_dataparallel": {"state_dict": {f"module.{k}": v for k, v in plain.items()}, "epoch": 3},
    }[fmt]
    path = tmp_path / f"{fmt}.pt"
    torch.save(payload, path)
    model = build_model("cifar10", "resnet18", width=SMALL, weights_path=path)
    loaded = model.backbone.state_dict()
    assert loaded.keys() == plain.keys() and all(torch.equal(loaded[k], plain[k]) for k in plain)


def test_weights_path_errors_name_the_file(tmp_path):
    wide = tmp_path / "wide.pt"
    torch.save(build_model("cifar10", "resnet18", width=0.25).backbone.state_dict(), wide)
    with pytest.raises(ModelWeightsError, match="shape") as err:
        build_model("cifar10", "resnet18", width=SMALL, weights_path=wide)
    assert str(wide) in str(err.value)

    other_arch = tmp_path / "vgg.pt"
    torch.save(build_model("cifar10", "vgg16", width=SMALL).backbone.state_dict(), other_arch)
    with pytest.raises(ModelWeightsError, match="missing keys") as err:
        build_model("cifar10", "resnet18", width=SMALL, weights_path=other_arch)
    assert str(other_arch) in str(err.value)

    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelWeightsError, match="not found") as err:
        build_model("cifar10", "resnet18", width=SMALL, weights_path=missing)
    assert str(missing) in str(err.value)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(ModelWeightsError, match="could not read") as err:
        build_model("cifar10", "resnet18", width=SMALL, weights_path=garbage)
    assert str(garbage) in str(err.value)


# ---------------------------------------------------------------------------
# Interoperability and device-agnostic code.


def test_torchattacks_can_call_the_model():
    torchattacks = pytest.importorskip("torchattacks")
    model = small_model("resnet18")
    x, y = images(), torch.tensor([0, 1])
    adv = torchattacks.PGDL2(model, eps=0.5, alpha=0.25, steps=2)(x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-4


def test_no_hard_coded_devices_in_model_code():
    root = Path(__file__).resolve().parents[1] / "src" / "iri_alignment" / "models"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert ".cuda(" not in text and "'cuda'" not in text and '"cuda"' not in text, path
