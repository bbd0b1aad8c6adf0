"""The stub's SQLite store: jobs, workers, webhook and dispatch attempts. All SQL lives here.

One connection, guarded by a lock, in WAL mode with `synchronous=FULL`: a committed change survives a
crash of the process or the machine. Every public method is one transaction (`BEGIN IMMEDIATE`, so
even a second process on the same file cannot interleave), which makes a claim atomic: two workers
never get the same job. Times are Unix seconds (wall clock, so leases survive a restart).

Job statuses: queued → claimed → running → completed | failed. A cancelled job is `failed` with
error code `cancelled`. A held job goes back to `queued` when its lease runs out or its worker reports a
retryable failure, while attempts remain; each such requeue is kept in `requeues`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from orchestrator_stub.leases import Expiry, cancelled_error, expiry_error, expiry_outcome, failure_requeues
from worker_app_fastwan.protocol import Capabilities, HeartbeatRequest, ProgressUpdate
from worker_app_fastwan.schema import JobInput

log = logging.getLogger("orchestrator_stub.db")

STATUSES = ("queued", "claimed", "running", "completed", "failed")
HELD = ("claimed", "running")
FINAL = ("completed", "failed")
_HELD_SQL = "('claimed', 'running')"
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
"""


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused with a different request body."""


class StatusOutcome(str, Enum):
    applied = "applied"
    requeued = "requeued"  # a retryable failure with attempts left: the job is queued again
    duplicate = "duplicate"  # the same final status from the same worker again
    conflict = "conflict"  # the worker does not hold the job (any more)
    stale = "stale"  # v1.1: the report names an attempt that is not the job's current one
    missing = "missing"


class CancelOutcome(str, Enum):
    cancelled = "cancelled"  # was queued: failed/cancelled now
    requested = "requested"  # held by a worker: it learns through its heartbeat
    final = "final"
    missing = "missing"


class LeaseState(str, Enum):
    held = "held"
    cancel = "cancel"  # still held, and a cancel was requested
    lost = "lost"


@dataclass(frozen=True)
class Claimed:
    job_id: str
    input: dict[str, Any]
    attempt: int


def _private_file(path: Path) -> None:
    """Create the database file 0600, or tighten an existing one: it holds notify_urls and their tokens.

    SQLite gives its -wal and -shm files the database file's permissions, so they follow.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class Store:
    """The job store; thread-safe, each public method one transaction."""

    def __init__(
        self,
        path: Path,
        *,
        lease_seconds: float,
        max_attempts: int,
        on_final: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._on_final = on_final
        self._clock = clock
        self._lock = threading.Lock()
        _private_file(path)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[tuple[sqlite3.Connection, list[str]]]:
        """One write transaction; yields the connection and a list to append jobs that became final."""
        finals: list[str] = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn, finals
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        # Outside the lock and after COMMIT, so the listener sees the committed row.
        for job_id in finals:
            if self._on_final:
                self._on_final(job_id)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ---- public API side ------------------------------------------------------------------------

    def create_job(
        self, job: JobInput, *, notify_url: str | None, idempotency_key: str | None, fingerprint: str
    ) -> tuple[str, bool]:
        """Queue a job; returns (job_id, created). A known Idempotency-Key returns its job instead."""
        now = self._clock()
        with self._tx() as (db, _):
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT job_id, request_hash FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    if row["request_hash"] != fingerprint:
                        raise IdempotencyConflict(idempotency_key)
                    return row["job_id"], False
            job_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (job_id, status, input, mode, width, height, num_frames, notify_url,"
                " idempotency_key, request_hash, stage, created_at, updated_at)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (
                    job_id,
                    _dumps(job.model_dump(mode="json", exclude_none=True)),
                    job.mode,
                    job.width,
                    job.height,
                    job.num_frames,
                    notify_url,
                    idempotency_key,
                    fingerprint,
                    now,
                    now,
                ),
            )
        return job_id, True

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return self._job_dict(rows[0]) if rows else None

    def list_jobs(self, status: str | None, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Newest first; returns (page, total matching)."""
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        with self._lock:
            total = self._conn.execute(f"SELECT COUNT(*) FROM jobs {where}", params).fetchone()[0]
            rows = self._conn.execute(
                f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?", (*params, limit, offset)
            ).fetchall()
        return [self._job_dict(row) for row in rows], total

    def changed_since(self, since: float, limit: int) -> list[dict[str, Any]]:
        """Jobs whose `updated_at` is at or after `since`, the latest changes first (the page's live updates)."""
        rows = self._read("SELECT * FROM jobs WHERE updated_at >= ? ORDER BY updated_at DESC LIMIT ?", (since, limit))
        return [self._job_dict(row) for row in rows]

    def cancel(self, job_id: str) -> CancelOutcome:
        now = self._clock()
        with self._tx() as (db, finals):
            row = db.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return CancelOutcome.missing
            if row["status"] in FINAL:
                return CancelOutcome.final
            if row["status"] == "queued":
                self._finish(db, finals, job_id, "failed", None, cancelled_error(), None, now)
                return CancelOutcome.cancelled
            db.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE job_id = ?", (now, job_id))
            return CancelOutcome.requested

    def current_attempt(self, job_id: str) -> int | None:
        rows = self._read("SELECT attempt FROM jobs WHERE job_id = ?", (job_id,))
        return rows[0]["attempt"] if rows else None

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {status: 0 for status in STATUSES} | {row["status"]: row["n"] for row in rows}

    def workers(self) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM workers ORDER BY last_seen DESC")
        return [dict(row) | {"gpu": _loads(row["gpu"])} for row in rows]

    def webhook_attempts(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT attempt, at, status_code, error, ok FROM webhook_attempts WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [dict(row) | {"ok": bool(row["ok"])} for row in rows]

    def dispatch_attempts(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT attempt, at, status_code, error FROM dispatch_attempts WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [dict(row) for row in rows]

    def requeues(self, job_id: str) -> list[dict[str, Any]]:
        """Each time the job went back to the queue: the attempt that ended, its worker, and why."""
        rows = self._read("SELECT attempt, worker_id, at, error FROM requeues WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(row) | {"error": _loads(row["error"])} for row in rows]

    # ---- worker side ----------------------------------------------------------------------------

    def claim(self, worker_id: str, gpu_class: str, caps: Capabilities) -> Claimed | None:
        """Hand the oldest queued job this worker can run to it, or None."""
        now = self._clock()
        modes = list(dict.fromkeys(caps.modes))
        with self._tx() as (db, finals):
            self._expire(db, finals, now)
            self._touch_worker(db, worker_id, gpu_class, now)
            if not modes:
                return None
            row = db.execute(
                f"SELECT job_id, input, attempt FROM jobs WHERE status = 'queued'"
                f" AND mode IN ({', '.join('?' * len(modes))}) AND width <= ? AND height <= ? AND num_frames <= ?"
                " ORDER BY seq LIMIT 1",
                (*modes, caps.max_width, caps.max_height, caps.max_frames),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'claimed', worker_id = ?, attempt = attempt + 1, lease_expires_at = ?,"
                " stage = 'queued', progress = 0, step = NULL, total_steps = NULL, message = NULL, updated_at = ?"
                " WHERE job_id = ?",
                (worker_id, now + self.lease_seconds, now, row["job_id"]),
            )
            db.execute("UPDATE workers SET job_id = ? WHERE worker_id = ?", (row["job_id"], worker_id))
        log.info("job claimed", extra={"job_id": row["job_id"], "worker_id": worker_id, "attempt": row["attempt"] + 1})
        return Claimed(row["job_id"], json.loads(row["input"]), row["attempt"] + 1)

    def heartbeat(self, worker_id: str, beat: HeartbeatRequest) -> list[str]:
        """Record the beat, renew the lease of every job it names; returns the job ids this worker should cancel.

        It names `job_id` (generating now) and, from v1.1 workers, `job_ids` (every job the worker holds).
        """
        now = self._clock()
        with self._tx() as (db, finals):
            self._expire(db, finals, now)
            self._touch_worker(db, worker_id, beat.gpu_class, now)
            db.execute(
                "UPDATE workers SET state = ?, job_id = ?, stage = ?, progress = ?, gpu = ?, last_heartbeat = ?"
                " WHERE worker_id = ?",
                (
                    beat.state,
                    beat.job_id,
                    beat.stage.value if beat.stage else None,
                    beat.progress,
                    _dumps(beat.gpu.model_dump()),
                    now,
                    worker_id,
                ),
            )
            cancel = [
                row["job_id"]
                for row in db.execute(
                    f"SELECT job_id FROM jobs WHERE worker_id = ? AND status IN {_HELD_SQL} AND cancel_requested = 1",
                    (worker_id,),
                )
            ]
            named = ([beat.job_id] if beat.job_id else []) + beat.job_ids
            for job_id in dict.fromkeys(named):
                if not self._renew(db, job_id, worker_id, now) and self._lost(db, job_id, worker_id):
                    cancel.append(job_id)
        return list(dict.fromkeys(cancel))

    def apply_status(
        self,
        job_id: str,
        worker_id: str,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        *,
        attempt: int | None = None,
        requeue_retryable: bool = True,
    ) -> StatusOutcome:
        """Apply a worker's running/completed/failed report, if that worker still holds the job.

        With `attempt` (v1.1) the report must also be about the job's current attempt: a late report of an
        earlier attempt is `stale`, even from the worker that holds the job again. A retryable failure sends
        the job back to the queue while attempts remain; a caller that already retried on its own (the
        dispatcher) passes `requeue_retryable=False` to make its failure final.
        """
        now = self._clock()
        with self._tx() as (db, finals):
            self._expire(db, finals, now)
            row = db.execute(
                "SELECT status, worker_id, final_by, attempt, cancel_requested FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return StatusOutcome.missing
            if attempt is not None and attempt != row["attempt"]:
                return StatusOutcome.stale
            if row["status"] in FINAL:
                same = row["status"] == status and row["final_by"] == worker_id
                return StatusOutcome.duplicate if same else StatusOutcome.conflict
            if row["status"] not in HELD or row["worker_id"] != worker_id:
                return StatusOutcome.conflict
            if status == "running":
                db.execute(
                    "UPDATE jobs SET status = 'running', lease_expires_at = ?, updated_at = ? WHERE job_id = ?",
                    (now + self.lease_seconds, now, job_id),
                )
                return StatusOutcome.applied
            if (
                error is not None
                and requeue_retryable
                and failure_requeues(error, row["attempt"], bool(row["cancel_requested"]), self._max_attempts)
            ):
                self._requeue(db, job_id, row["attempt"], worker_id, error, now)
                return StatusOutcome.requeued
            self._finish(db, finals, job_id, status, result, error, worker_id, now)
        return StatusOutcome.applied

    def record_progress(self, job_id: str, update: ProgressUpdate) -> bool:
        """Store a progress report from the job's holder; False when ignored (unknown, not held, not the holder).

        A worker whose lease ran out may still report for a while; its numbers must not overwrite those of
        the worker that holds the job now. Jobs the dispatcher holds are the exception: the queue-mode
        worker it fed reports under its own id, which the stub never learns.
        """
        with self._tx() as (db, _):
            cur = db.execute(
                "UPDATE jobs SET stage = ?, progress = ?, step = ?, total_steps = ?, message = ?, updated_at = ?"
                f" WHERE job_id = ? AND status IN {_HELD_SQL} AND worker_id IN (?, ?)",
                (
                    update.stage.value,
                    update.progress,
                    update.step,
                    update.total_steps,
                    update.message or None,
                    self._clock(),
                    job_id,
                    update.worker_id,
                    DISPATCHER_ID,
                ),
            )
            return cur.rowcount > 0

    def renew_lease(self, job_id: str, worker_id: str) -> LeaseState:
        now = self._clock()
        with self._tx() as (db, finals):
            self._expire(db, finals, now)
            if not self._renew(db, job_id, worker_id, now):
                return LeaseState.lost
            row = db.execute("SELECT cancel_requested FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            return LeaseState.cancel if row["cancel_requested"] else LeaseState.held

    def expire_leases(self) -> None:
        with self._tx() as (db, finals):
            self._expire(db, finals, self._clock())

    def restart_held_leases(self) -> int:
        """Make every held lease run out `lease_seconds` from now; returns how many. Called at start-up.

        While the stub was down no worker could renew its lease, so the stored expiry times would take jobs
        from workers that were still working (and throw their results away with a 409).
        """
        with self._tx() as (db, _):
            cur = db.execute(
                f"UPDATE jobs SET lease_expires_at = ? WHERE status IN {_HELD_SQL}",
                (self._clock() + self.lease_seconds,),
            )
            return cur.rowcount

    # ---- webhooks and dispatch ------------------------------------------------------------------

    def pending_webhooks(self) -> list[str]:
        return [
            row["job_id"] for row in self._read("SELECT job_id FROM jobs WHERE webhook_state = 'pending' ORDER BY seq")
        ]

    def pending_webhook_url(self, job_id: str) -> str | None:
        """The job's notify_url while its webhook is still pending, else None."""
        rows = self._read("SELECT notify_url FROM jobs WHERE job_id = ? AND webhook_state = 'pending'", (job_id,))
        return rows[0]["notify_url"] if rows else None

    def add_webhook_attempt(
        self, job_id: str, attempt: int, status_code: int | None, error: str | None, ok: bool
    ) -> None:
        with self._tx() as (db, _):
            db.execute(
                "INSERT INTO webhook_attempts (job_id, attempt, at, status_code, error, ok) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, attempt, self._clock(), status_code, error, int(ok)),
            )

    def set_webhook_state(self, job_id: str, state: str) -> None:
        with self._tx() as (db, _):
            db.execute("UPDATE jobs SET webhook_state = ? WHERE job_id = ?", (state, job_id))

    def add_dispatch_attempt(self, job_id: str, attempt: int, status_code: int | None, error: str | None) -> None:
        with self._tx() as (db, _):
            db.execute(
                "INSERT INTO dispatch_attempts (job_id, attempt, at, status_code, error) VALUES (?, ?, ?, ?, ?)",
                (job_id, attempt, self._clock(), status_code, error),
            )

    # ---- helpers (inside a transaction) ---------------------------------------------------------

    def _touch_worker(self, db: sqlite3.Connection, worker_id: str, gpu_class: str, now: float) -> None:
        db.execute(
            "INSERT INTO workers (worker_id, gpu_class, first_seen, last_seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (worker_id) DO UPDATE SET gpu_class = excluded.gpu_class, last_seen = excluded.last_seen",
            (worker_id, gpu_class, now, now),
        )

    def _renew(self, db: sqlite3.Connection, job_id: str, worker_id: str, now: float) -> bool:
        cur = db.execute(
            f"UPDATE jobs SET lease_expires_at = ? WHERE job_id = ? AND worker_id = ? AND status IN {_HELD_SQL}",
            (now + self.lease_seconds, job_id, worker_id),
        )
        return cur.rowcount > 0

    def _lost(self, db: sqlite3.Connection, job_id: str, worker_id: str) -> bool:
        """A job the worker still works on but no longer holds (its lease ran out): it should stop."""
        row = db.execute("SELECT final_by FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        # Not for a job this worker itself just finished: its heartbeat may simply predate its status call.
        return row is not None and row["final_by"] != worker_id

    def _expire(self, db: sqlite3.Connection, finals: list[str], now: float) -> None:
        rows = db.execute(
            f"SELECT job_id, attempt, cancel_requested, worker_id FROM jobs"
            f" WHERE status IN {_HELD_SQL} AND lease_expires_at <= ?",
            (now,),
        ).fetchall()
        for row in rows:
            outcome = expiry_outcome(row["attempt"], bool(row["cancel_requested"]), self._max_attempts)
            log.warning(
                "lease expired",
                extra={
                    "job_id": row["job_id"],
                    "worker_id": row["worker_id"],
                    "attempt": row["attempt"],
                    "outcome": outcome.value,
                },
            )
            error = expiry_error(outcome, row["attempt"], self.lease_seconds)
            if outcome is Expiry.requeue:
                self._requeue(db, row["job_id"], row["attempt"], row["worker_id"], error, now)
            else:
                self._finish(db, finals, row["job_id"], "failed", None, error, None, now)

    def _requeue(
        self,
        db: sqlite3.Connection,
        job_id: str,
        attempt: int,
        worker_id: str | None,
        error: dict[str, Any],
        now: float,
    ) -> None:
        """Back to the queue (the next claim is attempt + 1), keeping why this attempt ended. No webhook: not final."""
        db.execute(
            "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, stage = 'queued',"
            " progress = 0, step = NULL, total_steps = NULL, message = NULL, updated_at = ? WHERE job_id = ?",
            (now, job_id),
        )
        db.execute(
            "INSERT INTO requeues (job_id, attempt, worker_id, at, error) VALUES (?, ?, ?, ?, ?)",
            (job_id, attempt, worker_id, now, _dumps(error)),
        )
        log.info(
            "job requeued",
            extra={"job_id": job_id, "worker_id": worker_id, "attempt": attempt, "error_code": error.get("code")},
        )

    def _finish(
        self,
        db: sqlite3.Connection,
        finals: list[str],
        job_id: str,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        final_by: str | None,
        now: float,
    ) -> None:
        """Make a job final; a webhook becomes pending in the same transaction, so none is ever skipped."""
        db.execute(
            "UPDATE jobs SET status = ?, result = ?, error = ?, final_by = ?, lease_expires_at = NULL,"
            " progress = CASE WHEN ? = 'completed' THEN 1.0 ELSE progress END,"
            " webhook_state = CASE WHEN notify_url IS NULL THEN NULL ELSE 'pending' END,"
            " completed_at = ?, updated_at = ? WHERE job_id = ?",
            (status, _dumps(result), _dumps(error), final_by, status, now, now, job_id),
        )
        finals.append(job_id)
        log.info("job final", extra={"job_id": job_id, "status": status, "error_code": (error or {}).get("code")})

    @staticmethod
    def _job_dict(row: sqlite3.Row) -> dict[str, Any]:
        job = dict(row)
        for key in ("input", "result", "error"):
            job[key] = _loads(job[key])
        job["cancel_requested"] = bool(job["cancel_requested"])
        return job
