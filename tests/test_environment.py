"""The three descriptions of the environment agree: requirements.in (what we
depend on), requirements.lock (exact versions, installed by `make setup`) and
environment.yml (the same pins for conda users)."""

import re

import yaml


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def _direct(repo):
    names = []
    for line in (repo / "requirements.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower())
    return names


def test_lock_pins_every_direct_dependency_exactly(repo):
    lock = _pins((repo / "requirements.lock").read_text().splitlines())
    direct = _direct(repo)
    assert {"torch", "torchvision", "lpips", "mlflow", "dvc", "snakemake", "pandas", "scipy"} <= set(direct)
    missing = [n for n in direct if n not in lock]
    assert not missing, f"requirements.lock lacks {missing}: run `make lock`"
    assert lock["torch"].startswith("2.14.") and lock["torchvision"].startswith("0.29.")


def test_environment_yml_matches_the_lock(repo):
    env = yaml.safe_load((repo / "environment.yml").read_text())
    lock = _pins((repo / "requirements.lock").read_text().splitlines())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "pip" in conda
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-c requirements.lock" in pip_lines, "conda's pip must be constrained by the same lock"
    assert "-e ." in pip_lines, "the package itself is installed through pip"
    env_pins = _pins(pip_lines)
    for name in _direct(repo):
        assert name in env_pins, f"environment.yml does not pin {name}"
        assert env_pins[name] == lock[name], f"{name}: environment.yml {env_pins[name]} != lock {lock[name]}"
    assert set(env_pins) <= set(lock)


def test_pyproject_ranges_admit_the_locked_versions(repo):
    import tomllib

    from packaging.requirements import Requirement

    lock = _pins((repo / "requirements.lock").read_text().splitlines())
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        assert req.specifier.contains(lock[req.name.lower()], prereleases=True), f"{spec} excludes the locked {lock[req.name.lower()]}"
