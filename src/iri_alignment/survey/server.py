"""``iri survey serve``: the study on a small local server (Flask), answers in SQLite.

Routes (JSON in and out; requests above :data:`MAX_REQUEST_BYTES` are refused)::

    GET  /, /<file>           the study's public/ folder (page, jsPsych, images, public trials)
    POST /api/session         start a session: the least-filled list, a token, a seed
    POST /api/response        one answer, with the session's token; retries are idempotent
    POST /api/complete        only when every trial of the session is stored: the end / redirect
    GET  /admin/export        every answer (CSV, or ?format=json); needs the admin bearer token
    GET  /admin/status        sessions per list; needs the admin bearer token

Binds to 127.0.0.1 unless told otherwise. A rater's token is needed to write
to its session and reads nothing back; nothing but the admin routes reads
stored answers, and those compare the admin token in constant time. A trial
id the session was not given, or a choice that does not exist, is refused.
"""

from __future__ import annotations

import csv
import hmac
import io
import json
import logging
import os
import secrets
from pathlib import Path

from iri_alignment.survey.build import read_summary
from iri_alignment.survey.storage import Store

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 1024


class Study:
    """A built study folder (``iri survey build``), read once."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.summary = read_summary(self.folder)
        self.public = self.folder / "public"
        self.trials = json.loads((self.folder / "private" / "trials.json").read_text())
        self.lists = json.loads((self.folder / "private" / "lists.json").read_text())
        self.config = json.loads((self.public / "config.json").read_text())
        self.practice = list(self.config["practice"])

    def trials_of(self, list_id: int) -> list[str]:
        """Every trial a session on ``list_id`` answers: the practice, then its list."""
        return self.practice + list(self.lists[list_id]["trials"])


def admin_token(study: Study) -> str:
    """``IRI_SURVEY_ADMIN_TOKEN``, or a token kept in ``private/admin_token`` (made once, mode 600)."""
    env = os.environ.get("IRI_SURVEY_ADMIN_TOKEN")
    if env:
        return env
    path = study.folder / "private" / "admin_token"
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def create_app(study_folder: str | Path, *, db: str | Path | None = None, token: str | None = None):
    """The Flask app of a study folder (module docstring); answers go to ``db``
    (default ``STUDY/responses.db``)."""
    from flask import Flask, Response, abort, jsonify, request, send_from_directory

    study = Study(study_folder)
    store = Store(db or study.folder / "responses.db")
    admin = token or admin_token(study)
    cfg = study.summary["survey"]
    app = Flask("iri_survey", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.config["store"], app.config["study"] = store, study

    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            abort(400, "a JSON object is expected")
        return data

    def authorised_session(data: dict) -> dict:
        session = store.session(str(data.get("session_id", "")), str(data.get("token", "")))
        if session is None:
            abort(403, "unknown session or wrong token")
        return session

    @app.errorhandler(400)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(409)
    @app.errorhandler(413)
    def error(err):
        return jsonify(error=getattr(err, "description", str(err))), err.code

    @app.get("/")
    def index():
        return send_from_directory(study.public, "index.html")

    @app.get("/<path:name>")
    def public(name):
        return send_from_directory(study.public, name)  # safe_join: nothing outside public/

    @app.post("/api/session")
    def start():
        data = body()
        if data.get("study_hash") not in (None, study.summary["study_hash"]):
            abort(409, "this page belongs to another build of the study; reload it")
        started = store.start_session(
            n_lists=len(study.lists), timeout_s=60 * cfg["session_timeout_min"], study_hash=study.summary["study_hash"],
            prolific_pid=data.get("prolific_pid") or None, study_id=data.get("study_id") or None,
            prolific_session_id=data.get("prolific_session_id") or None, user_agent=data.get("user_agent"),
            viewport=data.get("viewport"))
        return jsonify(**started, trials=study.lists[started["list_id"]]["trials"], seed=started["session_id"])

    @app.post("/api/response")
    def respond():
        data = body()
        session = authorised_session(data)
        trial = str(data.get("trial", ""))
        if trial not in study.trials or trial not in set(study.trials_of(session["list_id"])):
            abort(400, f"trial {trial!r} is not one of this session's")
        t = study.trials[trial]
        response, rt = data.get("response"), data.get("rt")
        if not isinstance(response, int) or not 0 <= response < len(t["choices"]):
            abort(400, f"response must be a choice index 0..{len(t['choices']) - 1}")
        if not isinstance(rt, (int, float)) or rt < 0:
            abort(400, "rt must be a non-negative number of milliseconds")
        elapsed = data.get("time_elapsed")
        stored = store.add_response(session["session_id"], {
            "trial": trial, "kind": t["kind"], "task": t["task"], "set_name": t["set"], "model_id": t["model_id"],
            "regularizer": t["regularizer"], "k": t["k"], "choices": t["choices"], "answer": t["answer"],
            "response": response, "rt_ms": int(rt), "time_elapsed_ms": int(elapsed) if isinstance(elapsed, (int, float)) else None})
        return jsonify(stored=True, duplicate=not stored)

    @app.post("/api/complete")
    def complete():
        session = authorised_session(body())
        missing = sorted(set(study.trials_of(session["list_id"])) - store.answered(session["session_id"]))
        if missing:
            return jsonify(error=f"{len(missing)} answers are not stored yet", missing=missing), 409
        store.complete(session["session_id"])
        return jsonify(completed=True, redirect=cfg["completion_url"])

    def require_admin():
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {admin}".encode()):
            abort(403, "the admin routes need `Authorization: Bearer <admin token>`")

    @app.get("/admin/export")
    def export():
        require_admin()
        rows = store.export()
        if request.args.get("format") == "json":
            return jsonify(rows)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["session_id"])
        writer.writeheader()
        writer.writerows(rows)
        return Response(buffer.getvalue(), mimetype="text/csv")

    @app.get("/admin/status")
    def status():
        require_admin()
        sessions = store.sessions()
        per_list = {i: {"completed": 0, "started": 0} for i in range(len(study.lists))}
        for s in sessions:
            per_list[s["list_id"]]["completed" if s["completed"] else "started"] += 1
        return jsonify(lists=per_list, sessions=len(sessions))

    return app


def serve(study_folder: str | Path, *, host: str = "127.0.0.1", port: int = 8000, db: str | Path | None = None) -> None:
    """Run the study until interrupted (threaded werkzeug server: a pilot or a lab study;
    for a public study behind a proxy, run ``create_app`` under any WSGI server)."""
    from werkzeug.serving import run_simple

    app = create_app(study_folder, db=db)
    token = admin_token(app.config["study"])
    log.info("study %s on http://%s:%d/ ; answers in %s", study_folder, host, port, app.config["store"].path)
    log.info("export: curl -H 'Authorization: Bearer %s' http://%s:%d/admin/export > responses.csv", token, host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this address can open the study", host)
    run_simple(host, port, app, threaded=True)
