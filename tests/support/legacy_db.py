"""SQLite databases as stubs made them before the schema was Alembic's: the exact `CREATE` statements the stub
ran at every start (orchestrator_stub/db/schema.py until issue 27), kept here so the tests can make such a file
and check that today's stub opens it, stamps its revision and migrates it, rows and all.

- `PRE_ALEMBIC_SCHEMA`: the last of them (attempt secrets and output targets), as a new file got it.
- `altered()`: a file from before attempt secrets that the last of them opened: `attempt_secret_hash` added by
  ALTER TABLE (last in the table), the output-target table created beside.
- `before_attempt_secrets()`, `before_output_targets()`: without what those releases added.
- `EVENTS_SCHEMA`: the last of them, main d140ec1 (issue 28: the event log, webhook deliveries, `notify_events`),
  as a new file got it; `events_altered()`: a file from before it that d140ec1 opened (columns added last).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

PRE_ALEMBIC_SCHEMA = """
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


EVENT_TABLES = """
CREATE TABLE IF NOT EXISTS job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    type TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events (job_id, id);
CREATE INDEX IF NOT EXISTS job_events_by_time ON job_events (at);
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

EVENTS_SCHEMA = (
    PRE_ALEMBIC_SCHEMA.replace(
        "    webhook_state TEXT,\n", "    webhook_state TEXT,\n    notify_events TEXT,\n"
    ).replace("    ok INTEGER NOT NULL\n", "    ok INTEGER NOT NULL,\n    delivery_id INTEGER,\n    type TEXT\n")
    + EVENT_TABLES
)


def events_altered() -> str:
    return (
        PRE_ALEMBIC_SCHEMA
        + EVENT_TABLES
        + "ALTER TABLE jobs ADD COLUMN notify_events TEXT;\n"
        + "ALTER TABLE webhook_attempts ADD COLUMN delivery_id INTEGER;\n"
        + "ALTER TABLE webhook_attempts ADD COLUMN type TEXT;\n"
    )


def before_attempt_secrets() -> str:
    return PRE_ALEMBIC_SCHEMA.replace("    attempt_secret_hash TEXT,\n", "")


def before_output_targets() -> str:
    return PRE_ALEMBIC_SCHEMA.split("-- v1.2 output targets")[0]


def altered() -> str:
    return before_attempt_secrets() + "ALTER TABLE jobs ADD COLUMN attempt_secret_hash TEXT;\n"


def make(path: Path, schema: str = PRE_ALEMBIC_SCHEMA) -> Path:
    """A database file with `schema` and WAL on, as the old stub left it."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
    return path
