"""One place that turns ``--device auto|cpu|cuda|mps`` into a ``torch.device``."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for a ``--device`` value.

    Args:
        name: ``"auto"`` (default) picks CUDA, then MPS, then the CPU, whichever
            is available first; ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) and
            ``"mps"`` ask for that device and fail clearly if it is missing.

    Raises:
        ValueError: the name is unknown, or the device is not available here.
    """
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device auto or cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but MPS is not available; use --device auto or cpu")
    return torch.device(name)
