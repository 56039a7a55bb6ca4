"""``iri survey jatos``: the same study as a JATOS study archive (``.jzip``), for researchers who host on JATOS.

A ``.jzip`` is a ZIP of the study's asset folder plus one ``.jas`` JSON file
(version 3: uuid, title, dirName, componentList with one component whose
``htmlFilePath`` is ``index.html``, a batch allowing Prolific's General
Multiple workers, ``endRedirectUrl`` = ``survey.completion_url``). The page is
the one ``iri survey serve`` serves, with ``jatos.js`` added: it detects JATOS,
takes a list by rotation over study result ids (JATOS has no least-filled
count), appends every answer to the result data as it is given
(``jatos.appendResultData``), and ends with ``jatos.endStudyAndRedirect``.
Answers are analysed from JATOS's results export (``iri survey analyze``).
The uuids derive from the study hash, so a rebuilt archive replaces the study
in JATOS instead of adding a second one.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from pathlib import Path

from iri_alignment.io import atomic_write
from iri_alignment.survey.build import read_summary

NAMESPACE = uuid.UUID("8b3f0a57-3c1e-4b8e-9f9e-6a1d2c4e5f70")


def jas(summary: dict, texts: dict, completion_url: str | None, dir_name: str) -> dict:
    """The ``.jas`` study description (JATOS study archive, version 3)."""
    key = summary["study_hash"]
    return {"version": "3", "data": {
        "uuid": str(uuid.uuid5(NAMESPACE, f"study:{key}")), "title": texts["title"],
        "description": f"iri-alignment human study {key}: {len(summary['sets'])} IRI sets, "
                       f"{summary['main_trials']} trials, {summary['lists']} lists",
        "groupStudy": False, "linearStudy": False, "allowPreview": False, "dirName": dir_name,
        "comments": "Built by `iri survey jatos`; analyse the results with `iri survey analyze`.",
        "jsonData": None, "endRedirectUrl": completion_url or "", "studyEntryMsg": None,
        "componentList": [{"uuid": str(uuid.uuid5(NAMESPACE, f"component:{key}")), "title": "Image similarity",
                           "htmlFilePath": "index.html", "reloadable": False, "active": True, "comments": "",
                           "jsonData": None}],
        "batchList": [{"uuid": str(uuid.uuid5(NAMESPACE, f"batch:{key}")), "title": "Default", "active": True,
                       "maxActiveMembers": None, "maxTotalMembers": None, "maxTotalWorkers": None,
                       "allowedWorkerTypes": ["GeneralMultiple", "GeneralSingle", "PersonalSingle", "PersonalMultiple",
                                              "Jatos"], "comments": None, "jsonData": None}],
    }}


def build_jzip(study: str | Path, out: str | Path) -> dict:
    """Write ``out`` (a ``.jzip``) from a built study folder; returns what it holds."""
    study = Path(study)
    summary = read_summary(study)
    config = json.loads((study / "public" / "config.json").read_text())
    dir_name = f"iri_alignment_{summary['study_hash']}"
    page = (study / "public" / "index.html").read_text()
    if "<!-- host scripts -->" not in page:
        raise ValueError(f"{study}/public/index.html has no `<!-- host scripts -->` marker to add jatos.js at")
    page = page.replace("<!-- host scripts -->", '<script src="jatos.js"></script>')
    out = Path(out)
    files = 0
    with atomic_write(out) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{dir_name}.jas", json.dumps(jas(summary, config["texts"], config["completion_url"], dir_name),
                                                 indent=2))
        for path in sorted((study / "public").rglob("*")):
            if path.is_file():
                rel = path.relative_to(study / "public").as_posix()
                if rel == "index.html":
                    z.writestr(f"{dir_name}/index.html", page)
                else:
                    z.write(path, f"{dir_name}/{rel}")
                files += 1
    return {"jzip": str(out), "dir": dir_name, "files": files, "study_hash": summary["study_hash"]}
