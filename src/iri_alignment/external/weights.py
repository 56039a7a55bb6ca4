"""Weights files of external models: pinned by sha256, downloaded only on request, read safely.

Every file an external model reads is named with its sha256 in ``params.yaml``.
:func:`fetch` downloads ``url`` to ``file`` (a partial or mismatched download
is deleted and named in the error); :func:`read_weights` checks the hash and
loads with ``torch.load(weights_only=True)``, which runs no code from the file.
A pickled file (``dill``, whole modules) loads only with ``allow_pickle: true``
and a full 64-digit sha256 that matches.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import torch

from iri_alignment.external.spec import ExternalModel, ExternalModelError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def sha256sum(path: str | os.PathLike) -> str:
    """The sha256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<"))


def _where_to_put(model: ExternalModel) -> str:
    w = model.weights
    url = f" from {w['url']}" if w.get("url") else ""
    return (f"download it{url} and save it as {w['file']} (sha256 {w['sha256']}), or run "
            f"`iri models fetch --id {model.id} --profile <the profile that declares it>` where there is network")


def verify(model: ExternalModel) -> Path:
    """Check that the model's weights file exists and has its pinned sha256; return its path.

    Raises:
        ExternalModelError: the file is missing, or its hash differs (an HTML page
            saved as weights, a truncated copy, another file) -- named, with what to do.
    """
    w = model.weights
    path = Path(w["file"])
    if not path.is_file():
        raise ExternalModelError(f"{model.id}: weights file {path} is missing; {_where_to_put(model)}")
    actual = sha256sum(path)
    if not actual.startswith(w["sha256"]):
        what = " It is a web page (HTML), not weights: a download link that led to a login or confirmation page." \
            if _looks_like_html(path) else ""
        raise ExternalModelError(f"{model.id}: {path} has sha256 {actual}, but params pin {w['sha256']}.{what} "
                                 f"Delete it and {_where_to_put(model)}")
    if len(w["sha256"]) < 64:
        log.warning("%s: %s is pinned by a %d-digit sha256 prefix only; pin the full hash: %s", model.id, path,
                    len(w["sha256"]), actual)
    return path


def fetch(model: ExternalModel, *, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download the model's ``weights.url`` to ``weights.file`` and verify its sha256.

    A file already there with the right hash is kept (nothing is downloaded).
    The download goes to ``<file>.partial`` and is renamed only once its hash
    matches; a partial or mismatched download is deleted.

    Raises:
        ExternalModelError: no url, no network (the message names the file, its
            sha256 and where to put it), or a hash mismatch.
    """
    w = model.weights
    if w is None:
        raise ExternalModelError(f"{model.id}: source {model.source} has no weights file to fetch")
    path = Path(w["file"])
    if path.is_file():
        try:
            return verify(model)
        except ExternalModelError:
            log.warning("%s: %s has another sha256 than params pin; downloading it again", model.id, path)
    if not w.get("url"):
        raise ExternalModelError(f"{model.id}: weights.url is not set, so {path} cannot be fetched; save the file "
                                 f"there by hand (sha256 {w['sha256']})")
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: downloading %s -> %s", model.id, w["url"], path)
    try:
        request = urllib.request.Request(w["url"], headers={"User-Agent": "iri-alignment"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(partial, "wb") as out:
            from tqdm import tqdm

            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name, disable=not progress) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        partial.unlink(missing_ok=True)
        raise ExternalModelError(f"{model.id}: could not download {w['url']} ({type(err).__name__}: {err}). "
                                 f"Without network, save the file as {path} (sha256 {w['sha256']})") from None
    actual = sha256sum(partial)
    if not actual.startswith(w["sha256"]):
        html = " The server sent a web page (HTML), not the file." if _looks_like_html(partial) else ""
        partial.unlink()
        raise ExternalModelError(f"{model.id}: the download of {w['url']} has sha256 {actual}, not the pinned "
                                 f"{w['sha256']}; it was deleted.{html}")
    shutil.move(partial, path)
    return path


def read_weights(model: ExternalModel) -> object:
    """Verify and load the model's weights file on the CPU (the loaded object, not yet a state dict).

    ``torch.load(weights_only=True)``; a file that needs unpickling arbitrary
    objects is refused unless ``allow_pickle: true`` and the full sha256 is pinned.
    """
    path = verify(model)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04" and not model.allow_pickle:
        # torch.save writes zip archives; anything else is a legacy pickle or not a checkpoint
        raise ExternalModelError(f"{model.id}: {path} is not a torch.save zip archive (a legacy pickle?); "
                                 "set allow_pickle: true in its entry if you trust it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not model.allow_pickle:
            raise ExternalModelError(
                f"{model.id}: {path} holds Python objects, not only tensors, so weights_only=True refuses it "
                f"({str(err).splitlines()[0]}); set allow_pickle: true in its entry if you trust the file "
                "(its full sha256 must be pinned)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ExternalModelError(f"{model.id}: {path} is not a readable PyTorch file: {str(err).splitlines()[0]}") from None
    if len(model.weights["sha256"]) < 64:
        raise ExternalModelError(f"{model.id}: allow_pickle needs the full 64-digit sha256 pinned, not a prefix")
    log.warning("%s: loading %s with pickle (allow_pickle: true, sha256 matched)", model.id, path)
    return torch.load(path, map_location="cpu", weights_only=False)
