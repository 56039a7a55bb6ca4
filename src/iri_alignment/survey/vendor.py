"""Copy the study page's browser code from the pinned npm packages into the package (``make vendor``).

``survey/frontend/package.json`` and its ``package-lock.json`` pin jsPsych 8 and
its plugins; ``npm ci`` installs them into ``survey/frontend/node_modules`` and
this module copies each package's browser bundle into ``survey/static/vendor/``
with ``MANIFEST.json`` (package, version, sha256 of every file). Those copies
are committed, so building and serving a study needs no npm and no network,
and no page ever loads code from a CDN. ``tests/test_survey.py`` checks the
copies against the manifest and the manifest against the lock.

    python -m iri_alignment.survey.vendor      # after `npm ci` in survey/frontend
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRONTEND = HERE / "frontend"
VENDOR = HERE / "static" / "vendor"

#: npm package -> files copied (paths inside the package)
FILES = {
    "jspsych": ["dist/index.browser.min.js", "css/jspsych.css"],
    "@jspsych/plugin-html-button-response": ["dist/index.browser.min.js"],
    "@jspsych/plugin-instructions": ["dist/index.browser.min.js"],
    "@jspsych/plugin-preload": ["dist/index.browser.min.js"],
}


def vendor_name(package: str, file: str) -> str:
    """``@jspsych/plugin-preload`` + ``dist/index.browser.min.js`` -> ``plugin-preload.min.js``."""
    base = package.split("/")[-1]
    return f"{base}.css" if file.endswith(".css") else f"{base}.min.js"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_vendor(frontend: Path = FRONTEND, dest: Path = VENDOR) -> dict:
    """Copy the bundles from ``frontend/node_modules`` to ``dest`` and write ``dest/MANIFEST.json``."""
    manifest = {}
    dest.mkdir(parents=True, exist_ok=True)
    for package, files in FILES.items():
        root = frontend / "node_modules" / package
        if not root.is_dir():
            raise SystemExit(f"{root} is missing: run `npm ci --ignore-scripts` in {frontend} first")
        version = json.loads((root / "package.json").read_text())["version"]
        for file in files:
            name = vendor_name(package, file)
            shutil.copyfile(root / file, dest / name)
            manifest[name] = {"package": package, "version": version, "file": file, "sha256": sha256(dest / name)}
    (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


if __name__ == "__main__":
    for name, entry in copy_vendor().items():
        print(f"{name}: {entry['package']}@{entry['version']} {entry['sha256'][:12]}")
