"""Study parameters: load ``params.yaml``, merge a profile, validate, hash.

``params.yaml`` holds the full paper study at its top level and named partial
overrides under ``profiles``. The ``profile`` key picks one (``paper`` means
none); Snakemake sets it with ``--config profile=NAME``, DVC with
``-S profile=NAME``, every ``iri`` command with ``--profile NAME``. Merging is
recursive for mappings; lists and scalars in a profile replace the default.

The merged result is validated against the JSON schema shipped with the
package (``workflow/schemas/params.schema.yaml`` links to it). Every error names
the key path, the bad value and what is allowed, so a typo is found at once.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from functools import cache
from importlib import resources
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEFAULT_PARAMS = "params.yaml"
BASE_PROFILE = "paper"


class ParamsError(ValueError):
    """Invalid study parameters; the message lists every problem found."""


@cache
def schema() -> dict:
    """The JSON schema of merged params (parsed once)."""
    text = resources.files("iri_alignment").joinpath("schemas/params.schema.yaml").read_text()
    return yaml.safe_load(text)


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a params file; a missing file or a YAML error becomes a ParamsError."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file (pass --params FILE or run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` with ``override`` merged in (mappings recursively; any
    other value replaces). Neither argument is modified."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_profile(raw: dict, profile: str | None = None, *, source: str = DEFAULT_PARAMS) -> dict:
    """Merge profile ``profile`` (default: the file's ``profile`` key) into the
    defaults. The returned dict has ``profile`` set and no ``profiles`` key."""
    profiles = raw.get("profiles") or {}
    name = profile or raw.get("profile") or BASE_PROFILE
    known = [BASE_PROFILE, *profiles]
    if name != BASE_PROFILE and name not in profiles:
        hint = _did_you_mean(name, known)
        raise ParamsError(f"{source}: profile = {name!r} is not defined{hint}; defined profiles: {', '.join(known)}")
    base = {k: v for k, v in raw.items() if k != "profiles"}
    merged = deep_merge(base, profiles.get(name) or {}) if name != BASE_PROFILE else base
    merged["profile"] = name
    return merged


def validate(params: dict, *, source: str = DEFAULT_PARAMS) -> dict:
    """Validate merged params against the schema and the cross-key rules.

    Returns ``params`` unchanged; raises ParamsError listing every problem.
    """
    validator = jsonschema.Draft202012Validator(schema())
    problems = [_describe(err) for err in sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))]
    if not problems:
        problems = _cross_key_problems(params)
    if problems:
        label = f"{source} (profile {params.get('profile', BASE_PROFILE)!r})"
        raise ParamsError(f"{label} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))
    return params


def load_params(path: str | os.PathLike = DEFAULT_PARAMS, profile: str | None = None,
                overrides: Sequence[str] = ()) -> dict:
    """Read, merge, apply ``overrides`` (``KEY=VALUE``, see :func:`apply_overrides`)
    and validate: the params every command works from."""
    raw = read_yaml(path)
    merged = apply_overrides(merge_profile(raw, profile, source=str(path)), overrides, source=str(path))
    return validate(merged, source=str(path))


def apply_overrides(params: dict, overrides: Sequence[str], *, source: str = DEFAULT_PARAMS) -> dict:
    """Set dotted keys on merged params: ``["study.seed=2", "models.archs=[vgg16]"]``.

    Each value is parsed as YAML (``2`` is an int, ``[a, b]`` a list, ``null``
    None). Every key on the path but the last must exist; the result is
    validated by the caller, so a new last key is caught by the schema.
    Returns a new dict; raises ParamsError naming the bad override.
    """
    out = copy.deepcopy(params)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"override {item!r}: write KEY=VALUE, e.g. study.seed=1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ParamsError(f"override {item!r}: the value is not valid YAML: {err}") from None
        if key == "profile" or key.split(".")[0] == "profiles":
            # the profile is merged before overrides apply: setting it here would relabel the run, not change it
            raise ParamsError(f"override {item!r}: the profile is chosen before overrides apply; "
                              "pick it with --profile NAME (snakemake: --config profile=NAME)")
        *parents, last = key.split(".")
        node = out
        for depth, part in enumerate(parents):
            if not isinstance(node, dict) or part not in node:
                options = list(node) if isinstance(node, dict) else []
                where = ".".join(parents[:depth + 1])
                raise ParamsError(f"override {item!r}: {source} has no key {where}{_did_you_mean(part, options)}")
            node = node[part]
        if not isinstance(node, dict):
            raise ParamsError(f"override {item!r}: {'.'.join(parents)} is not a section")
        node[last] = value
    return out


def check_file(path: str | os.PathLike = DEFAULT_PARAMS, profile: str | None = None) -> list[str]:
    """Validate the file for one profile, or for the base and every profile
    when ``profile`` is None. Returns the names checked; raises ParamsError."""
    raw = read_yaml(path)
    names = [profile] if profile else [BASE_PROFILE, *(raw.get("profiles") or {})]
    if profile is None and raw.get("profile") not in (None, *names):
        merge_profile(raw, None, source=str(path))  # raises: the selected profile is undefined
    errors = []
    for name in names:
        try:
            validate(merge_profile(raw, name, source=str(path)), source=str(path))
        except ParamsError as err:
            errors.append(str(err))
    if errors:
        raise ParamsError("\n".join(errors))
    return names


def params_hash(obj: Any, length: int = 12) -> str:
    """A short, stable hash of any JSON-able params subtree (key order ignored)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def regularizer_section(params: dict, regularizer: str) -> dict | None:
    """A regularizer's own settings, ``inversion.<name with _>`` (None for reg-free)."""
    return params["inversion"].get(regularizer.replace("-", "_"))


def inversion_iterations(params: dict, regularizer: str) -> int:
    """Steps for one regularizer: ``inversion.iterations_by_regularizer[regularizer]``
    when given there, else ``inversion.iterations``."""
    inv = params["inversion"]
    return int(inv.get("iterations_by_regularizer", {}).get(regularizer, inv["iterations"]))


def inversion_restarts(params: dict, regularizer: str) -> int:
    """How many times a non-converged IRI of ``regularizer`` starts again from a
    new seed: ``inversion.restarts[regularizer]``, else 0 (the protocol)."""
    return int(params["inversion"].get("restarts", {}).get(regularizer, 0))


def get(params: dict, dotted: str) -> Any:
    """``get(p, "training.supervised.epochs")``: a nested value by its key path.

    Raises ParamsError naming the first missing part and the keys there."""
    node: Any = params
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:depth + 1])
            options = list(node) if isinstance(node, dict) else []
            listed = f"; keys there: {', '.join(map(str, options))}" if options else f"; {'.'.join(parts[:depth])} is a value"
            raise ParamsError(f"no key {where}{_did_you_mean(part, options)}{listed}")
        node = node[part]
    return node


# -- error messages -------------------------------------------------------------


def _path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(err: jsonschema.ValidationError) -> str:
    where = _path(err.absolute_path)
    value = err.instance
    props = err.schema.get("properties", {}) if isinstance(err.schema, dict) else {}
    if err.validator == "additionalProperties":
        unknown = [k for k in value if k not in props]
        return "; ".join(
            f"{_path([*err.absolute_path, k])}: unknown key{_did_you_mean(k, props)}; allowed keys here: {', '.join(props)}"
            for k in unknown
        )
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in value]
        return "; ".join(f"{where}: missing required key {k!r}" for k in missing)
    if err.validator == "enum":
        allowed = ", ".join(map(str, err.validator_value))
        return f"{where} = {value!r} is not allowed{_did_you_mean(value, err.validator_value)}; allowed: {allowed}"
    if err.validator == "type":
        return f"{where} = {value!r} has the wrong type: expected {err.validator_value}, got {type(value).__name__}"
    bounds = {
        "minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<",
        "minItems": "at least this many items:", "maxItems": "at most this many items:", "minLength": "length >=",
    }
    if err.validator in bounds:
        return f"{where} = {value!r} is out of range: must be {bounds[err.validator]} {err.validator_value}"
    return f"{where} = {value!r}: {err.message}"


def _cross_key_problems(params: dict) -> list[str]:
    """Rules a schema cannot express: which archs exist for the chosen dataset,
    that every trained regime has settings, that proxies are consistent."""
    from iri_alignment.data.specs import get_spec
    from iri_alignment.models.registry import ARCHITECTURES

    problems = []
    family = get_spec(params["data"]["dataset"]).family
    allowed = ARCHITECTURES[family]
    # contrastive archs matter only when a contrastive regime trains them
    keys = ("models.archs", "training.contrastive.archs") if params["training"]["contrastive_regimes"] else ("models.archs",)
    for key in keys:
        for i, arch in enumerate(get(params, key)):
            if arch not in allowed:
                problems.append(
                    f"{key}[{i}] = {arch!r} is not available for dataset {params['data']['dataset']!r}; "
                    f"allowed: {', '.join(allowed) or 'none (a folder dataset holds targets for external models; set models.archs: [] and training.contrastive_regimes: [])'}"
                )
    if family == "imagenet" and params["models"]["width"] != 1:
        problems.append(f"models.width = {params['models']['width']!r}: ImageNet models have no width multiplier; use 1.0")
    if params["data"]["dataset"] == "folder" and not params["data"].get("folder"):
        problems.append("data.dataset is folder but data.folder is not set: give data.folder.root (class sub-folders of images)")
    if params["data"]["dataset"] == "imagenet" and not params["data"].get("imagenet_root"):
        problems.append("data.imagenet_root is null: ImageNet is never downloaded; set it to a folder with train/ and val/")
    for name in params["training"]["regimes"]:
        if name not in params["training"]["regime"]:
            problems.append(f"training.regimes names {name!r} but training.regime.{name} is not defined")
        elif name not in ("standard", "standard-simclraug") and "attack" not in params["training"]["regime"][name]:
            problems.append(f"training.regime.{name}: missing required key 'attack' (this regime trains on adversaries)")
    inv = params["inversion"]
    if inv["epochs_regularizer"] not in inv["regularizers"]:
        problems.append(f"inversion.epochs_regularizer = {inv['epochs_regularizer']!r} is not in inversion.regularizers "
                        f"({', '.join(inv['regularizers'])}): the last epoch's point is the final model's IRI set under it; "
                        "add it there or choose one of them")
    for name in params["training"]["contrastive_regimes"]:
        if name not in params["training"]["contrastive"]["variants"]:
            problems.append(f"training.contrastive_regimes names {name!r} but training.contrastive.variants.{name} is not defined")
    problems += _external_problems(params)
    return problems


def _external_problems(params: dict) -> list[str]:
    """``models.external``: unique ids that differ from every trained model's, and entries that parse."""
    from iri_alignment.external.spec import ExternalModelError, parse_entry
    from iri_alignment.plan import trained_model_ids

    problems, seen = [], set()
    trained = set(trained_model_ids(params))
    for i, entry in enumerate(params["models"].get("external", [])):
        where = f"models.external[{i}]"
        if entry["id"] in seen:
            problems.append(f"{where}.id = {entry['id']!r} is used twice; ids must be unique")
        if entry["id"] in trained:
            problems.append(f"{where}.id = {entry['id']!r} is also a model the study trains; choose another id")
        seen.add(entry["id"])
        try:
            parse_entry(entry)
        except ExternalModelError as err:
            problems.append(f"{where}: {err}")
    if not trained and not seen:
        problems.append("models.archs and models.external are both empty: the study has no model to invert")
    return problems


def fast_path_settings(study: dict) -> dict:
    """The keys of ``study`` (``precision``, ``memory_format``, ``compile``) that change a job's
    numbers, for its hash: empty on the reference path (fp32, contiguous, eager), so reference jobs
    keep the hashes they had before these keys existed and are not rerun."""
    settings = {}
    if study.get("precision", "fp32") != "fp32":
        settings["precision"] = study["precision"]
    if study.get("memory_format", "contiguous") != "contiguous":
        settings["memory_format"] = study["memory_format"]
    if study.get("compile"):
        settings["compile"] = True
    return settings
