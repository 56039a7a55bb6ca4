import copy

import pytest
import yaml

from iri_alignment.params import (
    ParamsError,
    check_file,
    deep_merge,
    load_params,
    merge_profile,
    params_hash,
    read_yaml,
)


def edit(path, mutate):
    raw = yaml.safe_load(path.read_text())
    mutate(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_repository_params_are_valid_for_every_profile(repo):
    assert check_file(repo / "params.yaml") == ["paper", "embedded", "imagenet", "smoke"]


def test_default_is_the_full_paper_study(repo):
    p = load_params(repo / "params.yaml", "paper")
    assert p["profile"] == "paper"
    assert p["data"]["dataset"] == "cifar10"
    assert p["models"]["archs"] == ["resnet18", "vgg16", "densenet121", "inceptionv3"]
    assert p["training"]["supervised"]["epochs"] == 150
    assert p["training"]["regime"]["adversarial"]["attack"]["eps"] == 1.0
    assert p["inversion"]["iterations"] == 5000
    assert "profiles" not in p


def test_profile_overrides_only_what_it_names(repo):
    base = load_params(repo / "params.yaml", "paper")
    emb = load_params(repo / "params.yaml", "embedded")
    assert emb["profile"] == "embedded"
    assert emb["data"]["dataset"] == "shapes"
    # untouched keys inside an overridden section keep their defaults
    assert emb["training"]["supervised"]["momentum"] == base["training"]["supervised"]["momentum"]
    assert emb["inversion"]["human_aligned"] == base["inversion"]["human_aligned"]


def test_profile_key_in_file_selects_the_profile(params_file):
    edit(params_file, lambda r: r.update(profile="smoke"))
    assert load_params(params_file)["data"]["shapes"]["n_train"] == 200


def test_deep_merge_replaces_lists_and_leaves_inputs_alone():
    a = {"x": {"y": [1, 2], "z": 1}}
    b = {"x": {"y": [3]}}
    before = copy.deepcopy(a)
    assert deep_merge(a, b) == {"x": {"y": [3], "z": 1}}
    assert a == before


@pytest.mark.parametrize(
    "mutate, expected",
    [
        # wrong type
        (lambda r: r["training"]["supervised"].update(epochs="ten"),
         ["training.supervised.epochs", "'ten'", "wrong type", "integer"]),
        # unknown architecture
        (lambda r: r["models"].update(archs=["resnet18", "resnet19"]),
         ["models.archs[1]", "'resnet19'", "not allowed", "did you mean 'resnet18'", "densenet121"]),
        # negative epsilon
        (lambda r: r["training"]["regime"]["adversarial"]["attack"].update(eps=-1.0),
         ["training.regime.adversarial.attack.eps", "-1.0", "must be > 0"]),
        # misspelt key
        (lambda r: r["training"]["supervised"].update(epochz=3),
         ["training.supervised.epochz", "unknown key", "did you mean 'epochs'", "allowed keys"]),
        # missing section
        (lambda r: r.pop("inversion"),
         ["<top level>", "missing required key 'inversion'"]),
        # per-regularizer steps for a regularizer that does not exist
        (lambda r: r["inversion"].update(iterations_by_regularizer={"reg_free": 3000}),
         ["inversion.iterations_by_regularizer.reg_free", "unknown key", "did you mean 'reg-free'"]),
        # a negative number of restarts
        (lambda r: r["inversion"].update(restarts={"reg-free": -1}),
         ["inversion.restarts.reg-free", "-1", "must be >= 0"]),
    ],
    ids=["wrong-type", "unknown-arch", "negative-eps", "misspelt-key", "missing-section", "unknown-regularizer",
         "negative-restarts"],
)
def test_invalid_params_name_key_value_and_allowed(params_file, mutate, expected):
    edit(params_file, mutate)
    with pytest.raises(ParamsError) as info:
        load_params(params_file, "paper")
    for fragment in expected:
        assert fragment in str(info.value)


def test_error_inside_a_profile_names_the_profile(params_file):
    edit(params_file, lambda r: r["profiles"]["embedded"]["models"].update(width=-2))
    check_file(params_file, "paper")  # the defaults are still fine
    with pytest.raises(ParamsError) as info:
        check_file(params_file)
    assert "profile 'embedded'" in str(info.value) and "models.width" in str(info.value)


def test_unknown_profile_is_named_with_the_defined_ones(params_file):
    with pytest.raises(ParamsError, match=r"'embeded' is not defined \(did you mean 'embedded'\?\)"):
        load_params(params_file, "embeded")


def test_arch_must_exist_for_the_dataset_family(params_file):
    edit(params_file, lambda r: r["models"].update(archs=["resnet50"]))
    with pytest.raises(ParamsError, match=r"models.archs\[0\] = 'resnet50' is not available for dataset 'cifar10'"):
        load_params(params_file, "paper")


def test_imagenet_needs_a_folder(params_file):
    edit(params_file, lambda r: r["data"].update(dataset="imagenet") or r["models"].update(archs=["resnet18"]))
    with pytest.raises(ParamsError, match="data.imagenet_root is null"):
        load_params(params_file, "paper")


def test_epochs_regularizer_must_be_one_that_runs(params_file):
    edit(params_file, lambda r: r["inversion"].update(regularizers=["reg-free", "adversarial"],
                                                      epochs_regularizer="human-aligned"))
    with pytest.raises(ParamsError, match=r"inversion.epochs_regularizer = 'human-aligned' is not in inversion.regularizers"):
        load_params(params_file, "paper")


def test_broken_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        read_yaml(bad)
    with pytest.raises(ParamsError, match="no such params file"):
        read_yaml(tmp_path / "absent.yaml")


def test_params_hash_is_stable_and_sensitive(repo):
    raw = read_yaml(repo / "params.yaml")
    p = merge_profile(raw, "paper")
    h = params_hash(p["training"]["regime"]["adversarial"])
    shuffled = dict(reversed(list(p["training"]["regime"]["adversarial"].items())))
    assert params_hash(shuffled) == h
    p["training"]["regime"]["adversarial"]["attack"]["eps"] = 0.5
    assert params_hash(p["training"]["regime"]["adversarial"]) != h


def test_overrides_set_any_key_and_name_a_bad_one(params_file):
    from iri_alignment.params import apply_overrides, get

    params = load_params(params_file, "embedded", ["study.seed=3", "models.archs=[vgg16]"])
    assert params["study"]["seed"] == 3 and params["models"]["archs"] == ["vgg16"]
    with pytest.raises(ParamsError, match="no key stuy \\(did you mean 'study'\\?\\)"):
        apply_overrides(params, ["stuy.seed=1"])
    with pytest.raises(ParamsError, match="write KEY=VALUE"):
        apply_overrides(params, ["study.seed"])
    with pytest.raises(ParamsError, match="study.seed = 'x' has the wrong type"):
        load_params(params_file, "embedded", ["study.seed=x"])
    with pytest.raises(ParamsError, match="no key study.sed \\(did you mean 'seed'\\?\\); keys there: name, seed, device"):
        get(params, "study.sed")


def test_an_override_cannot_switch_the_profile(params_file):
    """--set profile=X would keep the other profile's values under X's name (MLflow experiment, tags)."""
    for item in ("profile=embedded", "profiles.smoke.study.seed=1"):
        with pytest.raises(ParamsError, match="pick it with --profile NAME"):
            load_params(params_file, "paper", [item])
