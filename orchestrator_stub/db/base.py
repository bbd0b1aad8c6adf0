"""The store's connection, its transactions, and the state changes several operations share.

Every public method of `Store` is one transaction (`BEGIN IMMEDIATE`, so even a second process on the
same file cannot interleave). The helpers here run inside one: expiring leases, requeueing and
finishing a job are reached from claims, heartbeats, status reports and cancels alike, so they are
stated once, below the mixins that use them.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from orchestrator_stub.db.events import QUEUED, WEBHOOK_TYPES, emit, final_event_type, wanted_webhooks
from orchestrator_stub.db.schema import HELD_SQL, connect, dumps, loads
from orchestrator_stub.leases import Expiry, expiry_error, expiry_outcome

# The name the store logged under before it was split: log filters and tests keep working.
log = logging.getLogger("orchestrator_stub.db")

# What a worker may say about itself is shown on the page and in /v1/queue: kept short, whatever it sends.
MAX_GPU_CLASS_CHARS = 64
MAX_GPU_NAME_CHARS = 128
MAX_MESSAGE_CHARS = 2000  # a progress message or a worker's error message, as stored and shown


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StoreBase:
    """The connection, its lock and the shared transitions; `Store` adds the operations."""

    def __init__(
        self,
        path: Path,
        *,
        lease_seconds: float,
        max_attempts: int,
        on_final: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        max_queued_jobs: int | None = None,
        max_workers: int = 1000,
        worker_retention_s: float = 24 * 3600.0,
        on_event: Callable[[], None] | None = None,
        on_webhook: Callable[[], None] | None = None,
        webhook_progress_s: float = 10.0,
    ) -> None:
        self.lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self.max_queued_jobs = max_queued_jobs
        self._max_workers = max_workers
        self._worker_retention_s = worker_retention_s
        self._on_final = on_final
        self._on_event = on_event  # an event was written: streams may read again (wakeup.py)
        self._on_webhook = on_webhook  # a webhook delivery was queued: the sender may look
        self.webhook_progress_s = webhook_progress_s
        self._wrote_events = self._wrote_webhooks = False  # in the current transaction (the lock is held)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = connect(path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[tuple[sqlite3.Connection, list[str]]]:
        """One write transaction; yields the connection and a list to append jobs that became final."""
        finals: list[str] = []
        with self._lock:
            self._wrote_events = self._wrote_webhooks = False
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn, finals
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            events, webhooks = self._wrote_events, self._wrote_webhooks
        # Outside the lock and after COMMIT, so the listener sees the committed row.
        for job_id in finals:
            if self._on_final:
                self._on_final(job_id)
        if events and self._on_event:
            self._on_event()
        if webhooks and self._on_webhook:
            self._on_webhook()

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ---- helpers (inside a transaction) ---------------------------------------------------------

    def _emit(
        self, db: sqlite3.Connection, job_id: str, event_type: str, now: float, extra: dict[str, Any] | None = None
    ) -> None:
        """Log an event of the job (after its change, in the same transaction); see `events.emit`."""
        self._wrote_events = True
        if emit(db, job_id, event_type, now, progress_every_s=self.webhook_progress_s, extra=extra):
            self._wrote_webhooks = True

    def _touch_worker(self, db: sqlite3.Connection, worker_id: str, gpu_class: str, now: float) -> None:
        known = db.execute("SELECT 1 FROM workers WHERE worker_id = ?", (worker_id,)).fetchone() is not None
        db.execute(
            "INSERT INTO workers (worker_id, gpu_class, first_seen, last_seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (worker_id) DO UPDATE SET gpu_class = excluded.gpu_class, last_seen = excluded.last_seen",
            (worker_id, clip(gpu_class, MAX_GPU_CLASS_CHARS), now, now),
        )
        if not known:  # only a new worker can push the table past its cap: made-up ids cost no more than this
            self._prune_workers(db, now)

    def _prune_workers(self, db: sqlite3.Connection, now: float) -> None:
        """Forget workers unheard of for `worker_retention_s`, then the least recently heard past `max_workers`."""
        db.execute("DELETE FROM workers WHERE last_seen < ?", (now - self._worker_retention_s,))
        db.execute(
            "DELETE FROM workers WHERE worker_id IN"
            " (SELECT worker_id FROM workers ORDER BY last_seen DESC, worker_id LIMIT -1 OFFSET ?)",
            (self._max_workers,),
        )

    def _renew(self, db: sqlite3.Connection, job_id: str, worker_id: str, now: float) -> bool:
        cur = db.execute(
            f"UPDATE jobs SET lease_expires_at = ? WHERE job_id = ? AND worker_id = ? AND status IN {HELD_SQL}",
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
            f" WHERE status IN {HELD_SQL} AND lease_expires_at <= ?",
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
            (job_id, attempt, worker_id, now, dumps(error)),
        )
        self._emit(db, job_id, QUEUED, now, {"requeued": True, "last_error": error})
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
        """Make a job final; its final event, and the webhook it asked for, are written in the same transaction,
        so none is ever skipped. `webhook_state` follows the final webhook (`pending`, then `delivered` or
        `gave_up`); a job that asked for none has none."""
        event_type = final_event_type(status, error)
        hooks = db.execute("SELECT notify_url, notify_events FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        wants = hooks["notify_url"] is not None and WEBHOOK_TYPES[event_type] in wanted_webhooks(hooks["notify_events"])
        db.execute(
            "UPDATE jobs SET status = ?, result = ?, error = ?, final_by = ?, lease_expires_at = NULL,"
            " progress = CASE WHEN ? = 'completed' THEN 1.0 ELSE progress END, webhook_state = ?,"
            " completed_at = ?, updated_at = ? WHERE job_id = ?",
            (status, dumps(result), dumps(error), final_by, status, "pending" if wants else None, now, now, job_id),
        )
        self._emit(db, job_id, event_type, now, {"result": result} if status == "completed" else {"error": error})
        finals.append(job_id)
        log.info("job final", extra={"job_id": job_id, "status": status, "error_code": (error or {}).get("code")})

    @staticmethod
    def _job_dict(row: sqlite3.Row) -> dict[str, Any]:
        job = dict(row)
        for key in ("input", "result", "error"):
            job[key] = loads(job[key])
        job["cancel_requested"] = bool(job["cancel_requested"])
        return job
