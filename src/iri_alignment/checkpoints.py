"""One checkpoint format for every model the package trains or loads.

A checkpoint is a ``torch.save`` file holding only tensors and plain Python
containers, so it loads with ``weights_only=True`` (no code runs on load)::

    {"format": "iri-alignment/checkpoint", "version": 1,
     "meta":  {"dataset", "arch", "width", "regime", "epoch", "params_hash",
               "git_commit", "metrics", ...},
     "model": state_dict,
     "state": {...}}   # optional: optimiser, scheduler, RNG, for resuming

Writes are atomic: a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iri_alignment.io import atomic_write
from iri_alignment.provenance import git_commit

FORMAT = "iri-alignment/checkpoint"
VERSION = 1
REQUIRED_META = ("dataset", "arch", "width", "regime", "epoch", "params_hash", "git_commit", "metrics")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, truncated, unsafe or does not match
    what was asked for; the message says which and why."""


@dataclass
class Checkpoint:
    meta: dict
    model: dict
    state: dict = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(path: str | Path, model: torch.nn.Module | dict, meta: dict, state: dict | None = None) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: destination file (parents are created).
        model: the model, or its state dict; tensors are moved to the CPU.
        meta: metadata; must hold the keys of ``REQUIRED_META`` except
            ``git_commit``, which is filled in when absent.
        state: optional resumable training state (optimiser, scheduler, RNG).
    """
    meta = {"git_commit": git_commit(), **meta}
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    weights = model.state_dict() if isinstance(model, torch.nn.Module) else model
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "meta": meta,
        "model": {k: v.detach().cpu() for k, v in weights.items()},
        "state": state or {},
    }
    path = Path(path)
    with atomic_write(path) as fh:
        torch.save(payload, fh)
    return path


def check_expected(meta: dict, path: str | Path, expect: dict | None) -> None:
    """Raise :class:`CheckpointError` unless ``meta`` has every ``expect`` value."""
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise CheckpointError(f"{path} does not match: its {key} is {meta.get(key)!r} but {want!r} was asked for")


def load_checkpoint(path: str | Path, *, expect: dict | None = None, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and check a checkpoint (safely: ``weights_only=True``).

    Args:
        path: the checkpoint file.
        expect: metadata the caller requires, e.g. ``{"arch": "resnet18"}``;
            any difference raises a CheckpointError naming it.
        map_location: where tensors are loaded (default the CPU).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (truncated: an interrupted write or copy); delete it and retrain or re-copy")
    # torch.save writes a zip archive: a file that does not start like one is
    # not a checkpoint; one that does but lacks the zip's closing directory
    # was cut short.
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":
        raise CheckpointError(f"{path} is corrupt: not a PyTorch checkpoint file (it does not start with a zip header)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated (an interrupted write or copy?): the zip directory at its end is missing")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, so it is not loaded "
            f"(weights_only=True refuses to run code from a file): {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not an iri-alignment checkpoint (no format tag {FORMAT!r}); "
            "to use outside weights, load them with `build_model(..., weights_path=...)`"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('version')}, this package reads {VERSION}")
    meta = payload.get("meta") or {}
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path} is malformed: its metadata lacks {missing}")
    check_expected(meta, path, expect)
    return Checkpoint(meta=meta, model=payload["model"], state=payload.get("state") or {}, path=path)


def load_model(path: str | Path, *, device: str | torch.device = "cpu", expect: dict | None = None,
               memory_format: str = "contiguous"):
    """Build the model a checkpoint describes and load its weights.

    Returns ``(model, checkpoint)`` with the model in eval mode on ``device``,
    its weights in ``memory_format`` (``study.memory_format``: ``contiguous``,
    the default and reference, or ``channels_last``; :func:`iri_alignment.devices.place`).
    A state dict that does not fit the architecture raises a CheckpointError
    listing the missing, unexpected and mis-shaped tensors.

    ``path`` may also be an external model's descriptor (``external.json``,
    :mod:`iri_alignment.external`): the model is rebuilt from its pinned
    weights file, and ``checkpoint.meta`` carries the entry's provenance.
    """
    from iri_alignment.devices import place
    from iri_alignment.models import build_model

    if str(path).endswith(".json"):
        from iri_alignment.external import load_descriptor

        model, meta = load_descriptor(path, device=device)
        check_expected(meta, path, expect)
        return place(model, device, memory_format), Checkpoint(meta=meta, model={}, path=Path(path))

    ckpt = load_checkpoint(path, expect=expect)
    meta = ckpt.meta
    model = build_model(meta["dataset"], meta["arch"], width=meta["width"])
    assert_state_fits(model, ckpt.model, source=str(path))
    model.load_state_dict(ckpt.model)
    return place(model, device, memory_format).eval(), ckpt


def assert_state_fits(model: torch.nn.Module, weights: dict[str, Any], *, source: str) -> None:
    """Raise a CheckpointError if ``weights`` does not match ``model`` exactly."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
        raise CheckpointError(f"{source} does not fit the architecture it names: " + "; ".join(parts))
