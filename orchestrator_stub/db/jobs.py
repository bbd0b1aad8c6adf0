"""The public API's side of the store: submitting jobs, reading them, cancelling one."""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any

from orchestrator_stub.db.base import StoreBase
from orchestrator_stub.db.events import CANCEL_REQUESTED, QUEUED
from orchestrator_stub.db.schema import FINAL, STATUSES, dumps, loads
from orchestrator_stub.leases import cancelled_error
from worker_app_fastwan.core.schema import JobInput


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused with a different request body."""


class QueueFull(Exception):
    """MAX_QUEUED_JOBS jobs are waiting already: a new one is refused until some have run or been cancelled."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} jobs are queued")
        self.limit = limit


class CancelOutcome(str, Enum):
    cancelled = "cancelled"  # was queued: failed/cancelled now
    requested = "requested"  # held by a worker: it learns through its heartbeat
    final = "final"
    missing = "missing"


class JobsMixin(StoreBase):
    """Submit, read and cancel jobs."""

    def create_job(
        self,
        job: JobInput,
        *,
        notify_url: str | None,
        idempotency_key: str | None,
        fingerprint: str,
        notify_events: tuple[str, ...] | None = None,
    ) -> tuple[str, bool]:
        """Queue a job; returns (job_id, created). A known Idempotency-Key returns its job instead.
        `notify_events`: the webhooks it asked for (None: the final ones).

        Raises `QueueFull` when `max_queued_jobs` are waiting (an idempotent replay still answers)."""
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
            if self.max_queued_jobs is not None:
                queued = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
                if queued >= self.max_queued_jobs:
                    raise QueueFull(self.max_queued_jobs)
            job_id = uuid.uuid4().hex
            job_input = job.model_dump(mode="json", exclude_none=True)
            db.execute(
                "INSERT INTO jobs (job_id, status, input, mode, width, height, num_frames, notify_url, notify_events,"
                " idempotency_key, request_hash, stage, created_at, updated_at)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (
                    job_id,
                    dumps(job_input),
                    job.mode,
                    job.width,
                    job.height,
                    job.num_frames,
                    notify_url,
                    dumps(list(notify_events)) if notify_events is not None else None,
                    idempotency_key,
                    fingerprint,
                    now,
                    now,
                ),
            )
            # The first event carries what a page needs to show the job (a stream alone can draw it).
            self._emit(db, job_id, QUEUED, now, {"input": job_input, "created_at": now})
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

    def changed_after(self, since: float, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """Jobs changed after the point (`since`, `after_seq`) in (updated_at, seq) order, oldest change first:
        the page catching up in pages, none skipped even when many share one `updated_at`."""
        rows = self._read(
            "SELECT * FROM jobs WHERE updated_at > ? OR (updated_at = ? AND seq > ?) ORDER BY updated_at, seq LIMIT ?",
            (since, since, after_seq, limit),
        )
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
            self._emit(db, job_id, CANCEL_REQUESTED, now)
            return CancelOutcome.requested

    def current_attempt(self, job_id: str) -> int | None:
        rows = self._read("SELECT attempt FROM jobs WHERE job_id = ?", (job_id,))
        return rows[0]["attempt"] if rows else None

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {status: 0 for status in STATUSES} | {row["status"]: row["n"] for row in rows}

    def requeues(self, job_id: str) -> list[dict[str, Any]]:
        """Each time the job went back to the queue: the attempt that ended, its worker, and why."""
        rows = self._read("SELECT attempt, worker_id, at, error FROM requeues WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(row) | {"error": loads(row["error"])} for row in rows]
