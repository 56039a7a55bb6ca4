"""External models (models.external): adapters for every weights format, hash pinning,
fetching, layer resolution, fake ReLU and inspection -- all offline, on tiny random
models that the tests save in each format."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from iri_alignment.data import DatasetError
from iri_alignment.external import ExternalModelError, load_external, parse_entry
from iri_alignment.external.inspection import inspect_external
from iri_alignment.external.weights import fetch, read_weights, verify
from iri_alignment.params import ParamsError, validate


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry(path: Path, **extra) -> dict:
    """A torchvision ResNet18 entry at 32 px (the smoke dataset's size) for the file at ``path``."""
    base = {"id": "resnet18-test", "source": "torchvision", "arch": "resnet18", "input_size": 32, "num_classes": 10,
            "weights": {"file": str(path), "sha256": sha(path)}}
    base.update(extra)
    return base


@pytest.fixture
def tv_net() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture
def plain_file(tmp_path, tv_net) -> Path:
    path = tmp_path / "resnet18.pth"
    torch.save(tv_net.state_dict(), path)
    return path


def tv_rep(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's own pooled features (the input of fc), for ImageNet-normalised x."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    captured = {}
    handle = net.fc.register_forward_pre_hook(lambda m, inp: captured.setdefault("rep", inp[0]))
    with torch.no_grad():
        net((x - mean) / std)
    handle.remove()
    return captured["rep"]


# -- adapters: each format a user brings ---------------------------------------------------------


def test_a_plain_torchvision_state_dict_gives_torchvisions_own_representation(smoke, plain_file, tv_net):
    model, meta = load_external(parse_entry(entry(plain_file)), smoke)
    x = torch.rand(3, 3, 32, 32)
    assert meta["resolved"]["layer"] == "flatten" and model.rep_dim == 512
    torch.testing.assert_close(model.represent(x), tv_rep(tv_net, x))
    assert meta["external"] and meta["regime"] == "standard" and meta["id"] == "resnet18-test"


def madry_checkpoint(net: nn.Module) -> dict:
    state = net.state_dict()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    model = {f"module.model.{k}": v for k, v in state.items()}
    model |= {f"module.attacker.model.{k}": v.clone() for k, v in state.items()}
    model |= {"module.normalizer.new_mean": mean.view(3, 1, 1), "module.normalizer.new_std": std.view(3, 1, 1),
              "module.attacker.normalize.new_mean": mean.view(3, 1, 1), "module.attacker.normalize.new_std": std.view(3, 1, 1)}
    return {"model": model, "epoch": 90}


def test_a_robustness_library_checkpoint_loads_its_model_weights_strictly(smoke, tmp_path, tv_net):
    path = tmp_path / "resnet18_l2_eps3.ckpt"
    torch.save(madry_checkpoint(tv_net), path)
    model, meta = load_external(parse_entry(entry(path, source="madrylab", training={"regime": "adversarial", "eps": 3.0})),
                                smoke)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.represent(x), tv_rep(tv_net, x))
    assert meta["regime"] == "adversarial" and meta["eps"] == 3.0


def test_a_robustness_library_checkpoint_whose_copies_differ_or_with_stray_keys_is_refused(smoke, tmp_path, tv_net):
    ckpt = madry_checkpoint(tv_net)
    ckpt["model"]["module.attacker.model.fc.bias"] += 1
    path = tmp_path / "tampered.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ExternalModelError, match="attacker's copy"):
        load_external(parse_entry(entry(path, source="madrylab")), smoke)
    ckpt = madry_checkpoint(tv_net)
    ckpt["model"]["module.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    with pytest.raises(ExternalModelError, match="module.extra.weight"):
        load_external(parse_entry(entry(path, source="madrylab")), smoke)


def test_a_robustbench_style_file_with_a_prefix_loads_through_a_factory(smoke, tmp_path, tv_net):
    path = tmp_path / "rb.pt"
    torch.save({f"module.model.{k}": v for k, v in tv_net.state_dict().items()}, path)
    e = entry(path, id="resnet18-rb", source="factory", arch="resnet18", factory="torchvision.models:resnet18",
              factory_kwargs={"num_classes": 10}, normalize="imagenet", layer="flatten", fake_relu=False)
    e["weights"]["format"] = "robustbench"
    model, _ = load_external(parse_entry(e), smoke)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.represent(x), tv_rep(tv_net, x))


def _robustbench_zoo() -> bool:
    try:
        import robustbench  # noqa: F401
        import robustbench.model_zoo  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _robustbench_zoo(), reason="RobustBench's model zoo is not importable here")
def test_a_robustbench_entry_builds_the_zoo_architecture_and_loads_a_pinned_file_strictly(smoke, tmp_path, plain_file):
    from iri_alignment.external.adapters import robustbench_constructor

    torch.manual_seed(0)
    net = robustbench_constructor("Engstrom2019Robustness")().eval()  # CIFAR-10 ResNet-50, normaliser inside
    path = tmp_path / "Engstrom2019Robustness.pt"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # as RobustBench's Drive files are
    e = entry(path, id="resnet50-engstrom", source="robustbench", arch="Engstrom2019Robustness", fake_relu=False)
    e.pop("num_classes")
    model, meta = load_external(parse_entry(e), smoke)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), net(x))  # [0, 1] in: the wrapper adds no normalisation of its own
    assert model.rep_dim == 2048 and meta["resolved"]["normalize"] == "inside the network"
    wrong = entry(plain_file, id="resnet50-wrong", source="robustbench", arch="Engstrom2019Robustness")
    with pytest.raises(ExternalModelError, match="missing keys"):
        load_external(parse_entry(wrong), smoke)


@pytest.mark.skipif(_robustbench_zoo(), reason="RobustBench's model zoo is importable here")
def test_source_robustbench_without_the_package_says_how_to_get_it(smoke, plain_file):
    e = entry(plain_file, source="robustbench", arch="Engstrom2019Robustness")
    with pytest.raises(ExternalModelError, match="pip install robustbench"):
        load_external(parse_entry(e), smoke)


def test_a_factory_model_with_its_own_checkpoint_is_studied_at_its_classifier_input(smoke, tmp_path):
    from iri_alignment.checkpoints import save_checkpoint
    from iri_alignment.models import build_model

    torch.manual_seed(1)
    own = build_model("shapes", "resnet18", width=0.0625).eval()
    path = save_checkpoint(tmp_path / "model.pt", own, {"dataset": "shapes", "arch": "resnet18", "width": 0.0625,
                                                        "regime": "standard", "epoch": 1, "params_hash": "x", "metrics": {}})
    e = {"id": "resnet18-mine", "source": "factory", "arch": "resnet18", "factory": "iri_alignment.models:build_model",
         "factory_kwargs": {"dataset": "shapes", "arch": "resnet18", "width": 0.0625},
         "weights": {"file": str(path), "sha256": sha(path)}, "fake_relu": False}
    model, meta = load_external(parse_entry(e), smoke)
    x = torch.rand(4, 3, 32, 32)
    assert meta["resolved"]["layer"] == "backbone.fc" and meta["resolved"]["layer_mode"] == "linear_input"
    torch.testing.assert_close(model.represent(x), own.represent(x))
    torch.testing.assert_close(model(x), own(x))


# -- hash pinning and safe loading -----------------------------------------------------------------


def test_a_file_with_another_sha256_is_refused_naming_both_hashes(smoke, plain_file):
    e = entry(plain_file)
    e["weights"]["sha256"] = "0" * 64
    with pytest.raises(ExternalModelError, match=f"{sha(plain_file)}.*{'0' * 64}"):
        verify(parse_entry(e))


def test_a_missing_file_error_names_the_file_its_hash_and_where_to_get_it(tmp_path, plain_file):
    e = entry(plain_file, weights={"file": str(tmp_path / "nothing.pth"), "sha256": "a" * 64,
                                   "url": "https://example.org/w.pth"})
    with pytest.raises(ExternalModelError) as err:
        verify(parse_entry(e))
    assert "nothing.pth" in str(err.value) and "a" * 64 in str(err.value) and "https://example.org/w.pth" in str(err.value)
    assert "iri models fetch --id resnet18-test" in str(err.value)


def test_an_html_page_saved_as_weights_is_named_as_a_web_page(tmp_path):
    page = tmp_path / "model.pt"
    page.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>")
    e = entry(page)
    e["weights"]["sha256"] = "b" * 64  # the hash of the real file
    with pytest.raises(ExternalModelError, match="web page"):
        verify(parse_entry(e))
    with pytest.raises(ExternalModelError, match="not a torch.save zip archive"):
        read_weights(parse_entry(entry(page)))  # even when pinned to the page's own hash


def test_a_pickled_module_needs_allow_pickle_and_a_full_hash(tmp_path, tv_net):
    path = tmp_path / "whole.pt"
    torch.save(tv_net, path)  # a whole nn.Module: unpickling runs code
    with pytest.raises(ExternalModelError, match="allow_pickle"):
        read_weights(parse_entry(entry(path)))
    short = entry(path, allow_pickle=True)
    short["weights"]["sha256"] = sha(path)[:16]
    with pytest.raises(ExternalModelError, match="full 64-digit"):
        read_weights(parse_entry(short))
    loaded = read_weights(parse_entry(entry(path, allow_pickle=True)))
    assert isinstance(loaded, nn.Module)


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: _Files(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_downloads_verifies_and_keeps_the_file(server, tmp_path, plain_file):
    served, url = server
    (served / "w.pth").write_bytes(plain_file.read_bytes())
    dest = tmp_path / "weights" / "w.pth"
    e = entry(plain_file, weights={"file": str(dest), "sha256": sha(plain_file), "url": f"{url}/w.pth"})
    assert fetch(parse_entry(e), progress=False) == dest
    assert sha(dest) == sha(plain_file) and not dest.with_name("w.pth.partial").exists()


def test_fetch_deletes_a_mismatched_download_and_names_it(server, tmp_path, plain_file):
    served, url = server
    (served / "w.pth").write_text("<html>sign in</html>")
    dest = tmp_path / "weights" / "w.pth"
    e = entry(plain_file, weights={"file": str(dest), "sha256": sha(plain_file), "url": f"{url}/w.pth"})
    with pytest.raises(ExternalModelError, match="deleted.*web page"):
        fetch(parse_entry(e), progress=False)
    assert not dest.exists() and not dest.with_name("w.pth.partial").exists()


def test_fetch_offline_names_the_file_and_its_hash(tmp_path, plain_file):
    dest = tmp_path / "w.pth"
    e = entry(plain_file, weights={"file": str(dest), "sha256": sha(plain_file), "url": "http://127.0.0.1:9/w.pth"})
    with pytest.raises(ExternalModelError) as err:
        fetch(parse_entry(e), progress=False)
    assert str(dest) in str(err.value) and sha(plain_file) in str(err.value)
    assert not dest.exists()


# -- layers, fake ReLU, input size, inspection -----------------------------------------------------


def test_layers_by_module_path_fx_node_and_classifier_input_agree(smoke, plain_file, tv_net):
    x = torch.rand(2, 3, 32, 32)
    want = tv_rep(tv_net, x)
    for layer in ("avgpool", "flatten", "@classifier_input"):
        model, meta = load_external(parse_entry(entry(plain_file, layer=layer, fake_relu=False)), smoke)
        torch.testing.assert_close(model.represent(x), want, msg=layer)
    assert meta["resolved"]["layer"] == "fc"


def test_a_layer_that_does_not_exist_lists_the_nearest_names(smoke, plain_file):
    with pytest.raises(ExternalModelError, match="nearest names: .*layer4"):
        load_external(parse_entry(entry(plain_file, layer="layer5", fake_relu=False)), smoke)


class TwoLayer(nn.Module):
    """A linear -> ReLU -> linear net whose hidden ReLU is the representation."""

    def __init__(self, reuse: bool = False):
        super().__init__()
        self.flat = nn.Flatten()
        self.hidden = nn.Linear(3 * 32 * 32, 16)
        self.relu = nn.ReLU(inplace=True)
        self.out = nn.Linear(16, 10)
        self.reuse = reuse

    def forward(self, x):
        h = self.relu(self.hidden(self.flat(x)))
        return self.out(self.relu(h) if self.reuse else h)


def two_layer(reuse: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return TwoLayer(reuse)


def test_a_fake_relu_passes_gradient_through_units_that_are_off(smoke, monkeypatch):
    monkeypatch.setattr("iri_alignment.models.two_layer", two_layer, raising=False)
    e = {"id": "mlp-test", "source": "factory", "arch": "mlp", "factory": "iri_alignment.models:two_layer",
         "layer": "relu", "fake_relu": True}
    model, meta = load_external(parse_entry(e), smoke)
    assert meta["resolved"]["fake_relu"] == "relu"
    x = torch.rand(1, 3, 32, 32)
    h = model.net.hidden(x.flatten(1))
    off = int((h <= 0).nonzero()[0, 1])  # a hidden unit that is switched off for this image
    grads = {}
    for fake in (False, True):
        xg = x.clone().requires_grad_(True)
        rep = model.represent(xg, fake_relu=fake)
        torch.testing.assert_close(rep, torch.relu(h))  # same values either way
        rep[0, off].backward()
        grads[fake] = xg.grad.abs().sum()
    assert grads[False] == 0 and grads[True] > 0


def test_inspection_refuses_a_fake_relu_that_runs_twice(smoke, monkeypatch):
    monkeypatch.setattr("iri_alignment.models.two_layer_reused", lambda: two_layer(reuse=True), raising=False)
    e = {"id": "mlp-test", "source": "factory", "arch": "mlp", "factory": "iri_alignment.models:two_layer_reused",
         "layer": "hidden", "fake_relu": "relu"}
    with pytest.raises(ExternalModelError, match="runs 2 times"):
        inspect_external(parse_entry(e), smoke, n=0)


def test_a_model_whose_input_size_differs_from_the_datasets_is_a_named_error(smoke, plain_file):
    with pytest.raises(ExternalModelError, match="takes 224 px images but data.dataset shapes has 32 px"):
        load_external(parse_entry(entry(plain_file, input_size=224)), smoke)


def test_inspection_reports_layer_checks_and_top1_on_test_images(smoke, plain_file):
    report = inspect_external(parse_entry(entry(plain_file)), smoke, n=20)
    assert report["layer"] == "flatten" and report["rep_dim"] == 512 and report["num_params"] == 11181642
    assert report["checks"]["eval_mode"] and report["checks"]["deterministic"] and report["checks"]["input_gradient"] > 0
    assert report["top1_n"] == 20 and 0 <= report["top1"] <= 100


# -- params ---------------------------------------------------------------------------------------


def test_params_name_the_bad_external_entry(smoke, plain_file):
    good = entry(plain_file)
    cases = [
        ([good, dict(good)], "models.external[1].id = 'resnet18-test' is used twice"),
        ([dict(good, id="resnet18-standard")], "also a model the study trains"),
        ([{**good, "source": "factory"}], "needs `factory"),
        ([{**good, "weights": {"file": "x", "sha256": "xyz"}}], "models.external[0].weights.sha256 = 'xyz'"),
        ([{**good, "id": "Bad_Id"}], "models.external[0].id = 'Bad_Id'"),
        ([{**good, "id": "resnet18-test-r1"}], "training replicate"),
    ]
    for external, message in cases:
        params = {**smoke, "models": {**smoke["models"], "external": external}}
        with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
            validate(params)


# -- the imagenet profile, your own images ------------------------------------------------------------


def test_the_imagenet_profile_lists_its_dag_offline_with_no_training_job(repo, tmp_path):
    import subprocess
    import sys

    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run([str(snakemake), "-n", "--quiet", "rules", "--config", "profile=imagenet",
                           f"results={tmp_path}/results"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["inspect_external"] == 6 and counts["evaluate"] == 6 and counts["invert"] == 18
    assert "train" not in counts and "train_contrastive" not in counts and "prepare_data" not in counts


def test_imagenet_targets_are_one_image_from_each_of_100_seeded_classes():
    import numpy as np

    from iri_alignment.generation import select_targets

    labels = np.repeat(np.arange(1000), 5)
    chosen = select_targets(labels, 1, seed=0, classes=100)
    assert len(chosen) == 100 and len(set(labels[chosen])) == 100
    assert np.array_equal(chosen, select_targets(labels, 1, seed=0, classes=100))
    assert not np.array_equal(chosen, select_targets(labels, 1, seed=1, classes=100))
    with pytest.raises(ValueError, match="has 1000 classes"):
        select_targets(labels, 1, seed=0, classes=1001)


@pytest.fixture
def own_images(tmp_path) -> Path:
    """Three classes of images of odd sizes and modes, as a user's folder holds them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, mode in (("cat", "RGB"), ("dog", "L"), ("owl", "RGBA")):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (40 + 9 * i, 70, 4 if mode == "RGBA" else 3), dtype=np.uint8)
            Image.fromarray(pixels[..., :4] if mode == "RGBA" else pixels).convert(mode).save(tmp_path / "imgs" / c / f"{i}.png")
    return tmp_path / "imgs"


def folder_study(smoke, own_images, external) -> dict:
    params = {**smoke, "data": {**smoke["data"], "dataset": "folder", "folder": {"root": str(own_images)}},
              "models": {**smoke["models"], "archs": [], "external": external},
              "training": {**smoke["training"], "regimes": [], "contrastive_regimes": []}}
    return validate(params)  # as the README's recipe writes it: training.contrastive.archs left at its default


def test_a_folder_of_own_images_is_resized_to_the_models_input_for_targets_and_evaluation(smoke, own_images, plain_file):
    from iri_alignment.data.folder import with_image_size
    from iri_alignment.external import find_external
    from iri_alignment.generation import load_targets
    from iri_alignment.training import evaluate_checkpoint

    params = folder_study(smoke, own_images, [entry(plain_file, input_size=48)])
    x, y, _ = load_targets(with_image_size(params, 48), device="cpu")
    assert x.shape == (3, 3, 48, 48) and y.tolist() == [0, 1, 2] and 0 <= float(x.min()) and float(x.max()) <= 1
    report = inspect_external(find_external(params, "resnet18-test"), params, n=6)
    assert report["input_size"] == 48 and report["top1"] is None and "10 classes" in report["top1_skipped"]
    from iri_alignment.external.inspection import descriptor
    from iri_alignment.io import write_json

    write_json(smoke["data"]["root"] + "/external.json", descriptor(find_external(params, "resnet18-test"), params, report))
    result = evaluate_checkpoint(params, smoke["data"]["root"] + "/external.json", device="cpu")
    assert result["clean_acc"] is None and "3 class folders" in result["note"] and result["validity"]["passed"]


def test_a_file_pil_cannot_read_in_the_folder_is_named(own_images):
    from iri_alignment.data.folder import image_folder

    (own_images / "dog" / "notes.png").write_text("not an image")
    dataset = image_folder(own_images, 32)
    bad = next(i for i, (path, _) in enumerate(dataset.samples) if path.endswith("notes.png"))
    assert dataset[0][0].shape == (3, 32, 32)
    with pytest.raises(DatasetError, match=r"dog/notes.png is not an image that PIL can read .*remove it"):
        dataset[bad]


def test_a_bad_file_met_by_a_dataloader_worker_is_one_line_naming_it(own_images):
    """torch re-raises a worker's error with the worker's traceback in its message; the user sees one line."""
    from iri_alignment.data.folder import image_folder
    from iri_alignment.data.loading import FolderSplit

    (own_images / "dog" / "notes.png").write_text("not an image")
    split = FolderSplit(str(own_images), "test", num_workers=1, dataset=image_folder(own_images, 32))
    with pytest.raises(DatasetError) as err:
        list(split.batches(8))
    message = str(err.value)
    assert message.endswith("remove it from the dataset folder or convert it") and "notes.png" in message
    assert "\n" not in message and "Traceback" not in message


def test_a_folder_dataset_refuses_training_and_names_missing_settings(smoke, own_images, plain_file):
    params = folder_study(smoke, own_images, [entry(plain_file)])
    with pytest.raises(ParamsError, match="allowed: none"):
        validate({**params, "models": {**params["models"], "archs": ["resnet18"]}})
    with pytest.raises(ParamsError, match="data.folder is not set"):
        validate({**params, "data": {k: v for k, v in params["data"].items() if k != "folder"}})
    with pytest.raises(ParamsError, match=r"training.contrastive.archs\[0\] = 'resnet18' is not available"):
        validate({**params, "training": {**params["training"], "contrastive_regimes": ["simclr"]}})
