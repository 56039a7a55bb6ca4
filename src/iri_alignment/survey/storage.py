"""Where the human study's answers are kept: one SQLite file, safe for many raters at once.

Tables::

    sessions(session_id, token_hash, rater, prolific_pid_hash, study_id, prolific_session_id,
             list_id, study_hash, user_agent, viewport, started, completed)
    responses(session_id, trial, kind, task, set_name, model_id, regularizer, k, choices,
              answer, response, correct, rt_ms, time_elapsed_ms, server_time,
              UNIQUE(session_id, trial))

WAL journal (readers beside one writer), a busy timeout, one connection per
request, and ``BEGIN IMMEDIATE`` around read-then-write steps (choosing the
least-filled list), so concurrent sessions neither block each other out nor
get the same stale count. A retried answer hits the UNIQUE constraint and is
ignored (``INSERT ... ON CONFLICT DO NOTHING``): retries are idempotent.
Tokens and Prolific ids are stored only as salted hashes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, rater TEXT NOT NULL,
    prolific_pid_hash TEXT, study_id TEXT, prolific_session_id TEXT, list_id INTEGER NOT NULL,
    study_hash TEXT NOT NULL, user_agent TEXT, viewport TEXT, started REAL NOT NULL, completed REAL
);
CREATE TABLE IF NOT EXISTS responses (
    session_id TEXT NOT NULL REFERENCES sessions(session_id), trial TEXT NOT NULL, kind TEXT NOT NULL,
    task TEXT NOT NULL, set_name TEXT NOT NULL, model_id TEXT NOT NULL, regularizer TEXT NOT NULL, k INTEGER,
    choices TEXT NOT NULL, answer INTEGER NOT NULL, response INTEGER NOT NULL, correct INTEGER NOT NULL,
    rt_ms INTEGER NOT NULL, time_elapsed_ms INTEGER, server_time REAL NOT NULL,
    UNIQUE (session_id, trial)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

RESPONSE_COLUMNS = ("session_id", "rater", "prolific_pid_hash", "study_id", "prolific_session_id", "study_hash",
                    "list_id", "trial", "kind", "task", "set_name", "model_id", "regularizer", "k", "choices",
                    "answer", "response", "correct", "rt_ms", "time_elapsed_ms", "server_time", "completed")


def digest(salt: str, value: str) -> str:
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()


class Store:
    """The study's SQLite file (module docstring)."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 10000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # outside any transaction, as SQLite requires
            db.executescript(SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('salt', ?)", (secrets.token_hex(16),))
            db.commit()
            self.salt = db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()[0]
        finally:
            db.close()

    @contextmanager
    def connect(self, immediate: bool = False):
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        try:
            db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # -- sessions ------------------------------------------------------------------------------
    def start_session(self, *, n_lists: int, timeout_s: float, study_hash: str, prolific_pid: str | None = None,
                      study_id: str | None = None, prolific_session_id: str | None = None,
                      user_agent: str | None = None, viewport=None) -> dict:
        """A new session on the least-filled list: completed sessions, and unfinished ones started
        less than ``timeout_s`` ago, count; ties go to the lowest list id."""
        token = secrets.token_hex(24)
        session_id = secrets.token_hex(12)
        now = time.time()
        with self.connect(immediate=True) as db:
            counts = dict(db.execute(
                "SELECT list_id, COUNT(*) FROM sessions WHERE completed IS NOT NULL OR started > ? GROUP BY list_id",
                (now - timeout_s,)).fetchall())
            list_id = min(range(n_lists), key=lambda i: (counts.get(i, 0), i))
            rater = digest(self.salt, prolific_pid) if prolific_pid else f"anon-{session_id}"
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                       (session_id, digest(self.salt, token), rater,
                        digest(self.salt, prolific_pid) if prolific_pid else None, study_id, prolific_session_id,
                        list_id, study_hash, (user_agent or "")[:400], json.dumps(viewport)[:100], now))
        return {"session_id": session_id, "token": token, "list_id": list_id}

    def session(self, session_id: str, token: str) -> dict | None:
        """The session if ``token`` is its own (constant-time comparison of the hashes), else None."""
        with self.connect() as db:
            row = db.execute("SELECT session_id, token_hash, list_id, completed FROM sessions WHERE session_id = ?",
                             (str(session_id),)).fetchone()
        if row is None or not secrets.compare_digest(row[1], digest(self.salt, str(token))):
            return None
        return {"session_id": row[0], "list_id": row[2], "completed": row[3]}

    # -- responses -----------------------------------------------------------------------------
    def add_response(self, session_id: str, row: dict) -> bool:
        """Store one answer; False when this session already answered that trial (a retry)."""
        with self.connect() as db:
            cur = db.execute(
                "INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (session_id, trial) DO NOTHING",
                (session_id, row["trial"], row["kind"], row["task"], row["set_name"], row["model_id"],
                 row["regularizer"], row["k"], json.dumps(row["choices"]), row["answer"], row["response"],
                 int(row["response"] == row["answer"]), row["rt_ms"], row.get("time_elapsed_ms"), time.time()))
            return cur.rowcount == 1

    def answered(self, session_id: str) -> set[str]:
        with self.connect() as db:
            return {r[0] for r in db.execute("SELECT trial FROM responses WHERE session_id = ?", (session_id,))}

    def complete(self, session_id: str) -> None:
        with self.connect() as db:
            db.execute("UPDATE sessions SET completed = ? WHERE session_id = ? AND completed IS NULL",
                       (time.time(), session_id))

    def export(self) -> list[dict]:
        """Every response joined with its session (the columns of :data:`RESPONSE_COLUMNS`)."""
        with self.connect() as db:
            rows = db.execute(
                "SELECT r.session_id, s.rater, s.prolific_pid_hash, s.study_id, s.prolific_session_id, s.study_hash, "
                "s.list_id, r.trial, r.kind, r.task, r.set_name, r.model_id, r.regularizer, r.k, r.choices, r.answer, "
                "r.response, r.correct, r.rt_ms, r.time_elapsed_ms, r.server_time, s.completed "
                "FROM responses r JOIN sessions s USING (session_id) ORDER BY r.session_id, r.server_time").fetchall()
        return [dict(zip(RESPONSE_COLUMNS, r)) for r in rows]

    def sessions(self) -> list[dict]:
        with self.connect() as db:
            cur = db.execute("SELECT session_id, rater, list_id, study_hash, started, completed FROM sessions")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
