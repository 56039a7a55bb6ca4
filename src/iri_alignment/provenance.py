"""Where a result came from: the git commit of the code that made it."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path


@cache
def git_commit(cwd: str | None = None) -> str:
    """The current commit (with ``-dirty`` if the tree has changes), or
    ``"unknown"`` outside a git checkout."""
    where = cwd or str(Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_isa() -> str:
    """The vector instructions torch's CPU kernels use here, and whether bf16 is
    native: ``"AVX512, bf16 native"``, ``"AVX2"``. Two CPUs of one model name
    (an "AMD EPYC" of two generations) can differ in both, and so in speed
    and in float reduction order."""
    import torch

    from iri_alignment.devices import bf16_native

    isa = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
    return f"{isa}, bf16 native" if bf16_native(torch.device("cpu")) else isa


def machine(threads: int | None = None) -> dict:
    """What a number was measured on: CPU model, instruction set and cores,
    torch threads and version, the GPU if any, Python, and the git commit of
    the code."""
    import os
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cpu_isa": cpu_isa(), "cores": os.cpu_count(), "torch_threads": threads or torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(), "git_commit": git_commit()}


def machine_line(info: dict) -> str:
    """``"Intel Xeon (2 cores, AVX512, bf16 native), torch 2.14.1, 2 threads, commit abc1234"``
    (records written before ``cpu_isa`` existed read without it)."""
    isa = f", {info['cpu_isa']}" if info.get("cpu_isa") else ""
    where = info["gpu"] or f"{info['cpu']} ({info['cores']} cores{isa})"
    return f"{where}, torch {info['torch']}, {info['torch_threads']} threads, commit {str(info['git_commit'])[:12]}"
