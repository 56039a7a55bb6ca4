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
