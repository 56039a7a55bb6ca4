"""One place that turns ``--device auto|cpu|cuda|mps`` into a ``torch.device``, and
``study.precision`` into the context a forward pass runs in."""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

log = logging.getLogger(__name__)

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


#: ``study.precision``: ``fp32`` is the reference (bitwise reproducible on one
#: machine); ``bf16`` runs the model's convolutions and matrix products in
#: bfloat16 under ``torch.autocast`` and keeps everything else in fp32.
PRECISIONS = ("fp32", "bf16")


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (CUDA of compute
    capability 8+, MPS, or a CPU with AVX512-BF16 or AMX); elsewhere bf16
    still works but is emulated, usually slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return True
    cpu = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
    return "AVX512" in cpu.upper() and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast(device: torch.device | str, precision: str = "fp32"):
    """The context a forward pass runs in for ``precision`` (one of :data:`PRECISIONS`).

    ``fp32``: no autocast (a no-op context). ``bf16``: ``torch.autocast`` with
    bfloat16 on ``device``'s type, so that convolutions and linear layers run in
    bf16 while their inputs, the parameters and the optimiser state stay fp32.
    Run the backward pass outside it (PyTorch's advice); gradients reach the
    fp32 leaves in fp32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)} (study.precision)")
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    _warn_if_emulated(device.type)
    return torch.autocast(device.type, dtype=torch.bfloat16)


@functools.cache
def _warn_if_emulated(device_type: str) -> None:
    """Say once per process when bf16 is asked for on a device that only emulates it:
    there it is a slowdown, not a speed-up (make bench on a 2-core AMD EPYC with AVX2
    and no AVX512-BF16: bf16 autocast at 0.06-0.09x fp32's speed)."""
    if not bf16_native(torch.device(device_type)):
        from iri_alignment.provenance import cpu_model

        where = cpu_model() if device_type == "cpu" else device_type
        log.warning("study.precision is bf16, but %s has no native bf16 (AVX512-BF16 or AMX on a CPU): autocast "
                    "emulates it and is usually many times slower than fp32 here (`make bench` measures it); "
                    "set study.precision: fp32", where)


def compile_mode(device: torch.device | str, enabled: bool) -> str | None:
    """The ``torch.compile`` mode of ``study.compile`` on ``device``: None when off;
    ``reduce-overhead`` on CUDA (CUDA graphs: one replay per inversion step instead
    of hundreds of kernel launches), ``default`` elsewhere (Inductor's fused CPU
    kernels; its compile time, tens of seconds per model, is paid once per process)."""
    if not enabled:
        return None
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"

