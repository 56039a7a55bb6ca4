"""``iri readme`` (``make readme``): put generated tables into the README.

The README quotes numbers only from files the pipeline writes
(``results/tables/summary.md``, ``results/calibration/calibration.md``), so a
rerun regenerates them instead of a person retyping them. Each quoted file
sits between two markers::

    <!-- BEGIN generated: results/tables/summary.md -->
    ...replaced by the file's content...
    <!-- END generated: results/tables/summary.md -->

and only the text between markers changes.
"""

from __future__ import annotations

import re
from pathlib import Path

from iri_alignment.io import atomic_write

MARKER = re.compile(r"(<!-- BEGIN generated: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- END generated: (?P=path) -->)", re.S)


def fill(readme: str | Path, root: str | Path = ".") -> tuple[list[str], list[str]]:
    """Replace every generated block of ``readme`` with the current content of its file
    (relative to ``root``). Returns ``(filled, missing)``: the paths copied in, and the
    paths whose file does not exist (their blocks are left as they were)."""
    readme = Path(readme)
    text = readme.read_text()
    filled, missing = [], []

    def replace(match: re.Match) -> str:
        source = Path(root) / match["path"]
        if not source.is_file():
            missing.append(match["path"])
            return match.group(0)
        filled.append(match["path"])
        return f"{match.group(1)}{source.read_text().rstrip()}\n{match.group(4)}"

    new = MARKER.sub(replace, text)
    if new != text:
        with atomic_write(readme, "w") as fh:
            fh.write(new)
    return filled, missing
