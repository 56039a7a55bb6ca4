"""One place that turns ``--device auto|cpu|cuda|mps`` into a ``torch.device``, and
``study.precision`` into the context a forward pass runs in, and ``study.memory_format``
into the layout a model's weights (and so its activations) are kept in."""

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


#: ``study.memory_format``: ``contiguous`` (NCHW) is the reference; ``channels_last``
#: (NHWC) keeps the model's weights, and so every convolution's output, in the layout
#: oneDNN's CPU kernels and cuDNN's tensor-core kernels prefer. The same arithmetic in
#: another order: not bitwise equal to the reference (tests/test_precision.py bounds it).
MEMORY_FORMATS = ("contiguous", "channels_last")

#: oneDNN's widest fp32 channel block on x86 (AVX-512; 8 on AVX2). Its channels_last
#: weight gradient of a strided 1x1 convolution with fewer input channels than the
#: block writes past its workspace (oneDNN issue 6035, open; torch 2.14): measured
#: here, a 2-core AMD EPYC with AVX2 aborts ("free(): invalid next size") at 2-5 input
#: channels and matches the contiguous gradient to 2e-6 at 8 to 32; on AVX-512 the
#: issue reports silently wrong gradients instead. Input gradients are not affected.
SAFE_STRIDED_1X1_CHANNELS = 16


def channels_last_hazards(model: torch.nn.Module) -> list[str]:
    """The layers of ``model`` whose channels_last weight gradient oneDNN gets wrong on a
    CPU: strided 1x1 convolutions with fewer than :data:`SAFE_STRIDED_1X1_CHANNELS` input
    channels per group (ResNet shortcuts below width 0.25), as ``name (in -> out, stride s)``.
    The limit was measured in fp32; bf16 kernels block channels at least as wide."""
    def stride(m):
        return m.stride[0] if len(set(m.stride)) == 1 else "x".join(map(str, m.stride))

    return [f"{name} ({m.in_channels} -> {m.out_channels}, stride {stride(m)})"
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
            and m.in_channels // m.groups < SAFE_STRIDED_1X1_CHANNELS]


def place(model: torch.nn.Module, device: torch.device | str, memory_format: str = "contiguous", *,
          trains: bool = False) -> torch.nn.Module:
    """Move ``model`` to ``device`` in ``memory_format`` (one of :data:`MEMORY_FORMATS`).

    Only the weights change layout: a convolution whose weight is channels_last
    computes in channels_last whatever its input's layout (PyTorch follows either
    operand), so batches and the inversion's image stay as they are, and the
    activations of every later layer follow. ``make bench`` (``--levers
    channels_last``) measures whether it pays on a machine; the ratios measured
    on three 2-core CPUs, and how they varied, are in docs/bench.md.

    Args:
        model: any ``nn.Module``; moved in place and returned.
        device: where it runs.
        memory_format: ``"contiguous"`` (default, the reference) or ``"channels_last"``.
        trains: its weights will get gradients. On a CPU, channels_last is then refused
            for a model with a layer :func:`channels_last_hazards` names (oneDNN would
            crash or compute a wrong weight gradient there); inference and input
            gradients (inversion, attacks) are unaffected.

    Raises:
        ValueError: an unknown ``memory_format``, or a hazard as above.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}: choose one of {', '.join(MEMORY_FORMATS)} "
                         "(study.memory_format)")
    if memory_format == "channels_last" and trains and torch.device(device).type == "cpu":
        hazards = channels_last_hazards(model)
        if hazards:
            raise ValueError(
                f"study.memory_format: channels_last cannot train this model on a CPU (oneDNN issue 6035): its "
                f"weight gradient of a strided 1x1 convolution with fewer than {SAFE_STRIDED_1X1_CHANNELS} input "
                f"channels is wrong or crashes, at {', '.join(hazards)}. Set study.memory_format: contiguous, or a "
                f"models.width that gives these layers at least {SAFE_STRIDED_1X1_CHANNELS} input channels")
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    return model.to(device=device, memory_format=fmt)


def compile_mode(device: torch.device | str, enabled: bool) -> str | None:
    """The ``torch.compile`` mode of ``study.compile`` on ``device``: None when off;
    ``reduce-overhead`` on CUDA (CUDA graphs: one replay per inversion step instead
    of hundreds of kernel launches), ``default`` elsewhere (Inductor's fused CPU
    kernels; its compile time, tens of seconds per model, is paid once per process)."""
    if not enabled:
        return None
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"

