"""An IRI set on disk: what ``iri invert`` writes and ``iri score`` reads.

One folder per (model, regularizer)::

    seed.png                the shared starting image x0 (8-bit)
    seed-1.png ...          restart seeds, only with inversion.restarts (results.csv: seed)
    targets/0000.png ...    target images x (8-bit)
    iris/0000.png ...       IRIs x' (8-bit), one per target, same order
    tensors.pt              float tensors: seed (every seed drawn), targets, iris (exact values),
                            rep_distances (N, N): rep loss of IRI i against target j's representation
    results.csv             per IRI: index, target_index, label, rep_loss, converged, best_iteration, seed,
                            rep_other_min, rep_other_median, rep_specific (the inversion's own null)
    targets.json            the dataset indices of the targets
    grid.png                targets above their IRIs (and each IRI's own seed), for a person to look at
    meta.json               checkpoint, model, regularizer, settings, summary

Scoring reads the PNGs, so it sees exactly what a human rater would
(protocol 5: "scoring uses the 8-bit PNG round trip").

``rep_loss`` and the null columns (protocol 9, "the inversion's own null") are
computed on the float IRIs of ``tensors.pt`` (the kept best iterates), not on
the PNGs: ``rep_other_min`` / ``rep_other_median`` are the smallest / median
rep loss of the IRI against the *other* targets' representations and
``rep_specific`` is ``rep_loss < rep_other_min``. Sets written before these
columns existed lack them (and ``rep_distances``); they read as before.

A broken folder reads as an :class:`IRISetError` (a ``ValueError``) naming the
file; a missing file as :class:`IRISetMissingFileError` (also a ``FileNotFoundError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from iri_alignment.io import atomic_write, read_json, write_json


#: the results.csv columns that readers (scoring, export) rely on
REQUIRED_COLUMNS = ("index", "target_index", "label", "rep_loss", "converged")
#: what to do about a broken set
REGENERATE = "delete the folder and rerun `iri invert` for it (or the pipeline, snakemake) to regenerate the set"


class IRISetError(ValueError):
    """An IRI set folder is broken: a file is unreadable or does not fit the
    others. The message names the file and says how to regenerate the set."""


class IRISetMissingFileError(IRISetError, FileNotFoundError):
    """A file an IRI set needs is missing (the set is incomplete or was damaged)."""


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8, rounding to nearest."""
    return (x.detach().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())


def from_uint8(a: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().div(255)


def save_png(path: Path, image_hwc: np.ndarray) -> None:
    with atomic_write(path) as fh:
        Image.fromarray(image_hwc).save(fh, format="PNG")


def load_png(path: Path) -> np.ndarray:
    """An 8-bit RGB image file as a writable (H, W, 3) uint8 array.

    Raises:
        IRISetMissingFileError: ``path`` does not exist.
        IRISetError: ``path`` is not a readable image (corrupt, truncated, not a PNG).
    """
    path = Path(path)
    if not path.is_file():
        raise IRISetMissingFileError(f"{path} is missing: the IRI set is incomplete; {REGENERATE}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy
    except (OSError, SyntaxError, ValueError) as err:  # PIL: UnidentifiedImageError, truncated data, bad chunks
        raise IRISetError(f"{path} is not a readable image ({type(err).__name__}: {err}); "
                          f"the IRI set is broken: {REGENERATE}") from None


def grid_image(targets: torch.Tensor, iris: torch.Tensor, seeds: torch.Tensor | None = None, *, columns: int = 10,
               scale: int = 2, pad: int = 2) -> np.ndarray:
    """A picture for people: rows of targets, each above the row of its IRIs.

    ``seeds`` is each IRI's starting image, (N, 3, H, W), or None. When every
    IRI started from the same seed, that seed leads each IRI row; when some
    restarted from another seed, a row of each IRI's own seed follows its IRI
    row instead, so every IRI can be compared with the seed it came from.
    """
    t, i = to_uint8(targets), to_uint8(iris)
    n, h, w, _ = t.shape
    s = to_uint8(seeds) if seeds is not None else None
    shared = s is not None and bool((s == s[:1]).all())
    lead = 1 if shared else 0
    blank = np.full((h, w, 3), 255, np.uint8)
    rows = []
    for start in range(0, n, columns):
        block = [[blank] * lead + list(t[start:start + columns]),
                 ([s[0]] if shared else []) + list(i[start:start + columns])]
        if s is not None and not shared:
            block.append(list(s[start:start + columns]))
        for row in block:
            row = row + [blank] * (columns + lead - len(row))
            rows.append(np.concatenate([np.pad(im, ((pad, pad), (pad, pad), (0, 0)), constant_values=255) for im in row], 1))
    grid = np.concatenate(rows, 0)
    return grid.repeat(scale, 0).repeat(scale, 1)


def seed_png(k: int) -> str:
    """File name of seed ``k``: ``seed.png`` for the shared seed, ``seed-<k>.png`` for restart k."""
    return "seed.png" if k == 0 else f"seed-{k}.png"


def seed_ids(table: pd.DataFrame) -> np.ndarray:
    """Which seed each IRI started from (0 for every IRI of a set written without restarts)."""
    return table["seed"].to_numpy(dtype=np.int64, copy=True) if "seed" in table else np.zeros(len(table), np.int64)


@dataclass
class IRISet:
    """An IRI set read back from disk (images from the 8-bit PNGs)."""

    folder: Path
    seed: torch.Tensor  # (N, 3, H, W): each IRI's own starting image
    targets: torch.Tensor  # (N, 3, H, W)
    iris: torch.Tensor  # (N, 3, H, W)
    table: pd.DataFrame
    meta: dict

    @property
    def labels(self) -> np.ndarray:
        return self.table["label"].to_numpy()


def write_iriset(folder: Path, *, seeds: torch.Tensor, targets: torch.Tensor, iris: torch.Tensor, table: pd.DataFrame,
                 target_indices, meta: dict, rep_distances: torch.Tensor | None = None) -> None:
    """Write every file of an IRI set (each one atomically; meta.json last,
    so a folder with meta.json is complete).

    Args:
        folder: the set's folder (created as needed).
        seeds: (K, 3, H, W): the shared seed first, then any restart seeds,
            which ``table["seed"]`` indexes.
        targets, iris: (N, 3, H, W) in [0, 1], in the order of ``table``.
        table: the per-IRI table, written as results.csv.
        target_indices: the N dataset indices of the targets (targets.json).
        meta: written as meta.json.
        rep_distances: (N, N) rep loss of IRI i against target j, stored in
            tensors.pt (default None: not stored).
    """
    folder = Path(folder)
    for name, batch in (("targets", targets), ("iris", iris)):
        for k, im in enumerate(to_uint8(batch)):
            save_png(folder / name / f"{k:04d}.png", im)
    for k, im in enumerate(to_uint8(seeds)):
        save_png(folder / seed_png(k), im)
    save_png(folder / "grid.png", grid_image(targets, iris, seeds[torch.as_tensor(seed_ids(table))]))
    with atomic_write(folder / "tensors.pt") as fh:
        tensors = {"seed": seeds.cpu(), "targets": targets.cpu(), "iris": iris.cpu()}
        if rep_distances is not None:
            tensors["rep_distances"] = rep_distances.cpu()
        torch.save(tensors, fh)
    with atomic_write(folder / "results.csv", "w") as fh:
        table.to_csv(fh, index=False)
    write_json(folder / "targets.json", [int(i) for i in target_indices])
    write_json(folder / "meta.json", meta)


def _read_table(path: Path) -> pd.DataFrame:
    """results.csv, checked for the columns readers rely on."""
    if not path.is_file():
        raise IRISetMissingFileError(f"{path} is missing: the IRI set {path.parent} is incomplete; {REGENERATE}")
    try:
        table = pd.read_csv(path)
    except ValueError as err:  # pandas: EmptyDataError, ParserError, UnicodeDecodeError
        raise IRISetError(f"{path} is not a readable table ({type(err).__name__}: {err}); {REGENERATE}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table]
    if missing:
        raise IRISetError(f"{path} lacks the column(s) {', '.join(missing)}; {REGENERATE}")
    if table.empty:
        raise IRISetError(f"{path} lists no IRIs; {REGENERATE}")
    if "seed" in table and not pd.api.types.is_integer_dtype(table["seed"]):
        raise IRISetError(f"{path} has a seed column that is not whole numbers; {REGENERATE}")
    return table


def _read_meta(path: Path) -> dict:
    """meta.json, which is written last: without it the set is incomplete."""
    if not path.is_file():
        raise IRISetMissingFileError(f"{path.parent} is not a complete IRI set (no meta.json): "
                                     f"run `iri invert` for it first (or the pipeline, snakemake)")
    try:
        meta = read_json(path)
    except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
        raise IRISetError(f"{path} is not readable JSON ({err}); {REGENERATE}") from None
    if not isinstance(meta, dict):
        raise IRISetError(f"{path} holds a {type(meta).__name__}, not an object; {REGENERATE}")
    return meta


def read_iriset(folder: str | Path) -> IRISet:
    """Read an IRI set through its PNGs.

    Args:
        folder: the set's folder, as :func:`write_iriset` wrote it.

    Returns:
        an :class:`IRISet` (images from the 8-bit PNGs, each IRI's own seed).

    Raises:
        IRISetMissingFileError: the folder, meta.json, results.csv or a PNG is missing.
        IRISetError: a file is corrupt, results.csv lacks a column, or the images differ in size.
    """
    folder = Path(folder)
    meta = _read_meta(folder / "meta.json")
    table = _read_table(folder / "results.csv")
    n = len(table)
    ids = seed_ids(table)
    files = {"targets": [folder / "targets" / f"{k:04d}.png" for k in range(n)],
             "iris": [folder / "iris" / f"{k:04d}.png" for k in range(n)],
             "seed": [folder / seed_png(k) for k in np.unique(ids)]}
    images = {name: [load_png(path) for path in paths] for name, paths in files.items()}
    shape = images["targets"][0].shape
    for name, paths in files.items():
        for path, image in zip(paths, images[name]):
            if image.shape != shape:
                raise IRISetError(f"{path} is {image.shape[1]}x{image.shape[0]} px, the set's first target "
                                  f"{files['targets'][0].relative_to(folder)} is {shape[1]}x{shape[0]}; {REGENERATE}")
    seeds = dict(zip(np.unique(ids), images["seed"]))
    return IRISet(folder, from_uint8(np.stack([seeds[k] for k in ids])), from_uint8(np.stack(images["targets"])),
                  from_uint8(np.stack(images["iris"])), table, meta)
