"""The fast paths: fp32 contiguous eager stays the reference; bf16 autocast
(study.precision), channels_last (study.memory_format) and torch.compile (study.compile)
are bounded against it on the smoke profile.

Tolerances (stated here; bf16 measured on a 2-core Xeon with AMX, where bf16 is native):
training, the smoke ResNet18 after one epoch on the same batches: loss within 0.05
and training accuracy within 5 points of fp32 (measured: loss 2.383 vs 2.397, accuracy
10.0 vs 10.5%); inversion, 100 reg-free steps on the smoke targets: the same targets
converge, mean rep loss within 0.02 of fp32 (measured 0.0897 vs 0.0949, 6 of 10
converged either way). channels_last, the same bounds (measured on a 2-core AMD EPYC
with AVX2: the smoke ResNet18's 100-step rep losses differ by at most 0.013, on one
target; 9 of 10 equal to 4 decimals).
"""

from __future__ import annotations

import pytest
import torch

from iri_alignment import devices
from iri_alignment.generation import load_targets
from iri_alignment.inversion import invert, make_seed, representation_fn
from iri_alignment.models import build_model
from iri_alignment.regularizers import make_objective, rep_loss
from iri_alignment.training import train

CPU = torch.device("cpu")


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="study.precision"):
        devices.autocast(CPU, "fp16")


def test_fp32_is_no_autocast_and_bf16_runs_convolutions_in_bf16():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(2, 3, 8, 8)
    with devices.autocast(CPU, "fp32"):
        assert conv(x).dtype == torch.float32
    with devices.autocast(CPU, "bf16"):
        assert conv(x).dtype == torch.bfloat16


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_that_only_emulates_it_warns_once(monkeypatch, caplog, native):
    """On a CPU without AVX512-BF16/AMX bf16 autocast is a slowdown (0.06-0.09x fp32 measured
    on an AMD EPYC): the user is told once, and not at all where bf16 is native or not asked for."""
    monkeypatch.setattr(devices, "bf16_native", lambda device: native)
    devices._warn_if_emulated.cache_clear()
    with caplog.at_level("WARNING", logger="iri_alignment.devices"):
        for _ in range(3):
            with devices.autocast(CPU, "bf16"):
                pass
        with devices.autocast(CPU, "fp32"):
            pass
    warnings = [r for r in caplog.records if "no native bf16" in r.getMessage()]
    assert len(warnings) == (0 if native else 1)
    devices._warn_if_emulated.cache_clear()


def test_representation_is_fp32_either_way_and_bf16_is_close():
    torch.manual_seed(0)
    model = build_model("shapes", "resnet18", width=0.0625).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        exact, fast = representation_fn(model)(x), representation_fn(model, precision="bf16")(x)
    assert exact.dtype == fast.dtype == torch.float32
    assert not torch.equal(exact, fast)  # bf16 really ran
    assert (torch.linalg.vector_norm(fast - exact, dim=1) / torch.linalg.vector_norm(exact, dim=1)).max() < 0.05


def _invert(params, model, targets, precision):
    seed = make_seed("noise", targets.shape[1:], 0)
    return invert(model, targets, seed, make_objective("reg-free", None), iterations=100, progress=False,
                  precision=precision)


def _smoke_targets(smoke):
    from iri_alignment.data import prepare

    prepare("shapes", smoke["data"]["root"], shapes=smoke["data"]["shapes"], download=True)
    return load_targets(smoke, device=CPU)[0]


def _assert_same_targets_converge(smoke, ref, fast):
    threshold = smoke["inversion"]["converged_below"]
    # Same targets converge, except where the reference's loss lies within 25% of the threshold:
    # there rounding decides the side (an AMD EPYC gave fp32 0.105, bf16 0.087 for one target;
    # the per-target gaps were at most 0.03 on it and on an Intel Xeon).
    clear = (ref.rep_loss - threshold).abs() > 0.25 * threshold
    assert clear.sum() >= 3, ref.rep_loss  # enough targets off the knife edge for the check to mean something
    assert torch.equal((ref.rep_loss < threshold)[clear], (fast.rep_loss < threshold)[clear])
    assert (ref.rep_loss - fast.rep_loss).abs().max() < 0.05
    assert abs(ref.rep_loss.mean() - fast.rep_loss.mean()) < 0.02


def test_bf16_inversion_converges_on_the_same_targets_and_reports_fp32_losses(smoke):
    torch.manual_seed(0)
    model = build_model("shapes", "resnet18", width=smoke["models"]["width"]).eval()
    targets = _smoke_targets(smoke)
    ref, fast = _invert(smoke, model, targets, "fp32"), _invert(smoke, model, targets, "bf16")
    _assert_same_targets_converge(smoke, ref, fast)
    # the losses bf16 reports are the fp32 losses of the images it returns
    with torch.no_grad():
        exact = rep_loss(representation_fn(model), fast.images, representation_fn(model)(targets))
    torch.testing.assert_close(fast.rep_loss, exact)
    # and fp32 is the reference: the default path is unchanged by the precision argument
    default = invert(model, targets, make_seed("noise", targets.shape[1:], 0), make_objective("reg-free", None),
                     iterations=100, progress=False)
    assert torch.equal(default.images, ref.images)


def _train_one_epoch_each(smoke, tmp_path, key: str, reference: str, fast: str, arch: str) -> dict:
    """The smoke model trained for one epoch with ``study.<key>`` at ``reference`` and at
    ``fast``, on the same batches; asserts the fast path's loss and training accuracy are within
    the module's tolerances and returns both saved ``last.pt`` payloads by value."""
    saved = {}
    for value in (reference, fast):
        params = {**smoke, "study": {**smoke["study"], key: value}}
        train(params, arch=arch, regime="standard", out=tmp_path / value, device=CPU, progress=False, evaluate=False)
        saved[value] = torch.load(tmp_path / value / "last.pt", weights_only=False)
    ref, got = saved[reference]["meta"]["metrics"], saved[fast]["meta"]["metrics"]
    assert abs(ref["loss"] - got["loss"]) < 0.05, (ref, got)
    assert abs(ref["train_acc"] - got["train_acc"]) < 0.05, (ref, got)
    return saved


def test_bf16_training_tracks_fp32_on_the_smoke_profile(smoke, tmp_path):
    _train_one_epoch_each(smoke, tmp_path, "precision", "fp32", "bf16", "resnet18")


def test_compiled_inversion_matches_eager(monkeypatch):
    """study.compile: the torch.compile'd step stays within float noise of eager. The test compiles
    with the aot_eager backend (TorchDynamo and AOTAutograd, as Inductor does, without its C++
    build, which takes minutes on this CPU); `make bench` measures Inductor itself."""
    from iri_alignment.devices import compile_mode

    assert compile_mode(CPU, False) is None and compile_mode(CPU, True) == "default"
    modes, real_compile = [], torch.compile

    def compile_for_test(fn, mode=None, **kw):
        modes.append(mode)
        return real_compile(fn, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_for_test)
    torch.manual_seed(0)
    model = build_model("shapes", "vgg16", width=0.0625).eval()
    targets = torch.rand(4, 3, 32, 32)
    seed = make_seed("noise", targets.shape[1:], 0)
    eager = invert(model, targets, seed, make_objective("reg-free", None), iterations=5, progress=False)
    compiled = invert(model, targets, seed, make_objective("reg-free", None), iterations=5, progress=False,
                      compile_mode="default")
    assert modes == ["default"]
    torch.testing.assert_close(compiled.rep_loss, eager.rep_loss, atol=1e-3, rtol=1e-3)


def test_unknown_memory_format_is_named():
    with pytest.raises(ValueError, match="study.memory_format"):
        devices.place(torch.nn.Conv2d(3, 4, 3), CPU, "nhwc")


def test_channels_last_inversion_converges_on_the_same_targets(smoke):
    """Inversion takes input gradients only, which oneDNN's channels_last 1x1 bug does not touch:
    the smoke ResNet18 (strided 1x1 shortcuts with 4 and 8 input channels) inverts in channels_last."""
    torch.manual_seed(0)
    model = build_model("shapes", "resnet18", width=smoke["models"]["width"]).eval()
    targets = _smoke_targets(smoke)
    ref = _invert(smoke, model, targets, "fp32")
    devices.place(model, CPU, "channels_last")
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    fast = _invert(smoke, model, targets, "fp32")
    _assert_same_targets_converge(smoke, ref, fast)


def test_channels_last_is_refused_for_training_where_onednn_gets_the_weight_gradient_wrong(smoke, tmp_path):
    """A strided 1x1 convolution with fewer than 16 input channels (the smoke ResNet18's shortcuts)
    crashes oneDNN's channels_last weight gradient on AVX2 ("free(): invalid next size", measured)
    and gives wrong gradients on AVX-512 (oneDNN issue 6035): refused with the layers named, before
    any step; the same model may still be placed for inference."""
    model = build_model("shapes", "resnet18", width=smoke["models"]["width"])
    assert devices.channels_last_hazards(model) == ["backbone.layer2.0.shortcut.0 (4 -> 8, stride 2)",
                                                    "backbone.layer3.0.shortcut.0 (8 -> 16, stride 2)"]
    assert devices.channels_last_hazards(build_model("shapes", "resnet18", width=0.25)) == []
    assert devices.channels_last_hazards(build_model("shapes", "vgg16", width=smoke["models"]["width"])) == []
    with pytest.raises(ValueError, match=r"layer2\.0\.shortcut\.0 \(4 -> 8.*study.memory_format: contiguous"):
        devices.place(model, CPU, "channels_last", trains=True)
    params = {**smoke, "study": {**smoke["study"], "memory_format": "channels_last"}}
    with pytest.raises(ValueError, match="oneDNN issue 6035"):
        train(params, arch="resnet18", regime="standard", out=tmp_path / "r18", device=CPU, progress=False,
              evaluate=False)
    assert not (tmp_path / "r18" / "last.pt").exists()


def test_channels_last_training_tracks_contiguous_and_has_its_own_hash(smoke, tmp_path):
    from iri_alignment.training import run_hash

    saved = _train_one_epoch_each(smoke, tmp_path, "memory_format", "contiguous", "channels_last", "vgg16")
    hashes = {layout: run_hash({**smoke, "study": {**smoke["study"], "memory_format": layout}}, "shapes", "vgg16",
                               "standard") for layout in saved}
    # it really trained in that layout (torch.save keeps strides), and says so only when not the reference
    first = next(k for k, v in saved["channels_last"]["model"].items() if v.dim() == 4)
    assert saved["channels_last"]["model"][first].is_contiguous(memory_format=torch.channels_last)
    assert not saved["contiguous"]["model"][first].is_contiguous(memory_format=torch.channels_last)
    assert saved["channels_last"]["meta"]["memory_format"] == "channels_last"
    assert "memory_format" not in saved["contiguous"]["meta"]
    # and a checkpoint loads in either layout, for inversion (generation passes study.memory_format)
    from iri_alignment.checkpoints import load_model

    for layout, expect in (("channels_last", True), ("contiguous", False)):
        model, _ = load_model(tmp_path / "contiguous" / "model.pt", memory_format=layout)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is expect
    # the reference keeps the hash it had before the key existed; channels_last retrains
    unset = {**smoke, "study": {k: v for k, v in smoke["study"].items() if k != "memory_format"}}
    assert hashes["contiguous"] == run_hash(unset, "shapes", "vgg16", "standard") != hashes["channels_last"]
