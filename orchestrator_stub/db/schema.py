"""The stub's SQLite schema, the job statuses, and how the database file is opened.

One connection in WAL mode with `synchronous=FULL`: a committed change survives a crash of the process
or the machine. Kept apart from the queries so the table layout can be read in one place.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

STATUSES = ("queued", "claimed", "running", "completed", "failed")
HELD = ("claimed", "running")
FINAL = ("completed", "failed")
HELD_SQL = "('claimed', 'running')"
# The worker id the dispatcher holds jobs under (here, not in dispatcher.py: the store needs it too).
DISPATCHER_ID = "salad-dispatcher"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    mode TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    num_frames INTEGER NOT NULL,
    notify_url TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT,
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    stage TEXT,
    progress REAL NOT NULL DEFAULT 0,
    step INTEGER,
    total_steps INTEGER,
    message TEXT,
    result TEXT,
    error TEXT,
    final_by TEXT,
    attempt_secret_hash TEXT,
    webhook_state TEXT,
    notify_events TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    completed_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_lease ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_update ON jobs (updated_at);
CREATE INDEX IF NOT EXISTS jobs_by_webhook ON jobs (webhook_state) WHERE webhook_state = 'pending';
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    gpu_class TEXT,
    state TEXT,
    job_id TEXT,
    stage TEXT,
    progress REAL,
    gpu TEXT,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    last_heartbeat REAL
);
CREATE INDEX IF NOT EXISTS workers_by_seen ON workers (last_seen);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    ok INTEGER NOT NULL,
    delivery_id INTEGER,
    type TEXT
);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_job ON webhook_attempts (job_id, id);
CREATE TABLE IF NOT EXISTS dispatch_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS dispatch_attempts_by_job ON dispatch_attempts (job_id, id);
CREATE TABLE IF NOT EXISTS requeues (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT,
    at REAL NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requeues_by_job ON requeues (job_id, id);
-- v1.2 output targets: one row per target handed out (a claim, or a dispatcher's delivery). A table of its
-- own, created if missing, so a database from before it opens unchanged.
CREATE TABLE IF NOT EXISTS output_targets (
    video_key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    poster_key TEXT,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    verified_at REAL
);
CREATE INDEX IF NOT EXISTS output_targets_by_job ON output_targets (job_id, attempt);
-- The event log: every state change of a job, written in the transaction that makes the change. `id` only
-- grows, so a stream resumes after the last id it sent (SSE's Last-Event-ID).
CREATE TABLE IF NOT EXISTS job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    type TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events (job_id, id);
CREATE INDEX IF NOT EXISTS job_events_by_time ON job_events (at);
-- One row per webhook a job asked for (`notify_events`), written with the event it tells of; delivered in
-- id order per job. `next_at`: when the next attempt is due; `lease_until`: an attempt is in flight until then.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    lease_until REAL,
    body TEXT,
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_job ON webhook_deliveries (job_id, id);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
"""


# Columns added since the first schema, for databases made before them: (table, column, its definition).
# Each is added once by `migrate`; an existing database keeps every row and works on.
ADDED_COLUMNS = (
    # v1.2: SHA-256 of the current attempt's secret (protocol's attempt secret); NULL for attempts claimed without.
    ("jobs", "attempt_secret_hash", "TEXT"),
    # Live progress and Standard Webhooks: the webhooks a job asked for, and which delivery an attempt was of.
    ("jobs", "notify_events", "TEXT"),
    ("webhook_attempts", "delivery_id", "INTEGER"),
    ("webhook_attempts", "type", "TEXT"),
)


class UnencodableText(ValueError):
    """A text value the store cannot write as UTF-8 (a lone surrogate): refused before it reaches the file."""


class CheckedConnection(sqlite3.Connection):
    """Every statement's text parameters are checked to encode as UTF-8 before SQLite sees them.

    Everything stored is then valid UTF-8 by construction: no route can store what a later read would fail to
    send (a 500 on every read of the job). The caller turns the refusal into a 422.
    """

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        for value in parameters.values() if isinstance(parameters, dict) else parameters:
            if isinstance(value, str):
                _encodable(value)
        return super().execute(sql, parameters)


def _encodable(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnencodableText("a text value is not valid Unicode (lone surrogate)") from None


def private_file(path: Path) -> None:
    """Create the database file 0600, or tighten an existing one: it holds notify_urls and their tokens.

    SQLite gives its -wal and -shm files the database file's permissions, so they follow.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def dumps(value: Any) -> str | None:
    """Compact JSON text, non-ASCII as itself (an emoji is 4 bytes, not a 12-character escape); refuses what
    cannot be encoded (`UnencodableText`) and numbers JSON cannot carry (NaN, infinities)."""
    if value is None:
        return None
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise UnencodableText("a number is not finite") from None
    _encodable(text)
    return text


def loads(value: str | None) -> Any:
    if value is None:
        return None
    data = json.loads(value)
    # Rows written before `dumps` refused lone surrogates hold them as ASCII escapes: shown as U+FFFD, not a 500.
    return _mend(data) if "\\ud" in value.lower() else data


def _mend(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8") if not _is_text(value) else value
    if isinstance(value, dict):
        return {_mend(k): _mend(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mend(v) for v in value]
    return value


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating it 0600) the database and make sure every table exists."""
    private_file(path)
    # isolation_level=None: the store issues BEGIN IMMEDIATE itself, so one method is one transaction.
    conn = sqlite3.connect(
        str(path), check_same_thread=False, isolation_level=None, timeout=10, factory=CheckedConnection
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns a database made by an older stub lacks (plain ALTER TABLE, in one transaction)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, column, definition in ADDED_COLUMNS:
            have = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
