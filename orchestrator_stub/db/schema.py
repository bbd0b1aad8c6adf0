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
    webhook_state TEXT,
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
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    ok INTEGER NOT NULL
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
"""


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
    return None if value is None else json.dumps(value, separators=(",", ":"))


def loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating it 0600) the database and make sure every table exists."""
    private_file(path)
    # isolation_level=None: the store issues BEGIN IMMEDIATE itself, so one method is one transaction.
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    return conn
