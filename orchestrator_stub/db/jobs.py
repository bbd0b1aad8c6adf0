"""The public API's side of the store: submitting jobs, reading them, cancelling one."""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any

from orchestrator_stub.db.base import SUBMIT_LOCK, StoreBase
from orchestrator_stub.db.events import CANCEL_REQUESTED, QUEUED
from orchestrator_stub.db.schema import FINAL, STATUSES, Queued, dumps, loads
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

        Raises `QueueFull` when `max_queued_jobs` are waiting (an idempotent replay still answers). On
        PostgreSQL submissions take turns (an advisory lock), so replicas keep the cap and the key between them."""
        with self._tx() as tx:
            if self.db.postgres:
                tx.run("SELECT pg_advisory_xact_lock(:lock)", lock=SUBMIT_LOCK)
            if idempotency_key is not None:
                row = tx.row("SELECT job_id, request_hash FROM jobs WHERE idempotency_key = :k", k=idempotency_key)
                if row is not None:
                    if row["request_hash"] != fingerprint:
                        raise IdempotencyConflict(idempotency_key)
                    return row["job_id"], False
            if self.max_queued_jobs is not None:
                queued = tx.scalar("SELECT COUNT(*) FROM jobs WHERE status = 'queued'")
                if queued >= self.max_queued_jobs:
                    raise QueueFull(self.max_queued_jobs)
            job_id = uuid.uuid4().hex
            job_input = job.model_dump(mode="json", exclude_none=True)
            tx.run(
                "INSERT INTO jobs (job_id, status, input, mode, width, height, num_frames, notify_url, notify_events,"
                " idempotency_key, request_hash, stage, created_at, updated_at)"
                " VALUES (:j, 'queued', :input, :mode, :w, :h, :f, :url, :events, :key, :hash, 'queued', :now, :now)",
                j=job_id,
                input=dumps(job_input),
                events=dumps(list(notify_events)) if notify_events is not None else None,
                mode=job.mode,
                w=job.width,
                h=job.height,
                f=job.num_frames,
                url=notify_url,
                key=idempotency_key,
                hash=fingerprint,
                now=tx.now,
            )
            tx.queued.append(Queued(job_id, job.mode, job.width, job.height, job.num_frames))
            # The first event carries what a page needs to show the job (a stream alone can draw it).
            self._emit(tx, job_id, QUEUED, {"input": job_input, "created_at": tx.now})
        return job_id, True

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM jobs WHERE job_id = :j", j=job_id)
        return self._job_dict(rows[0]) if rows else None

    def list_jobs(self, status: str | None, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Newest first; returns (page, total matching)."""
        where = "WHERE status = :status" if status else ""
        with self.db.reading() as tx:
            total = tx.scalar(f"SELECT COUNT(*) FROM jobs {where}", status=status)
            rows = tx.rows(
                f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT :limit OFFSET :offset",
                status=status,
                limit=limit,
                offset=offset,
            )
        return [self._job_dict(row) for row in rows], int(total)

    def changed_since(self, since: float, limit: int) -> list[dict[str, Any]]:
        """Jobs whose `updated_at` is at or after `since`, the latest changes first (the page's live updates)."""
        rows = self._rows(
            "SELECT * FROM jobs WHERE updated_at >= :since ORDER BY updated_at DESC LIMIT :limit",
            since=since,
            limit=limit,
        )
        return [self._job_dict(row) for row in rows]

    def changed_after(self, since: float, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """Jobs changed after the point (`since`, `after_seq`) in (updated_at, seq) order, oldest change first:
        the page catching up in pages, none skipped even when many share one `updated_at`."""
        rows = self._rows(
            "SELECT * FROM jobs WHERE updated_at > :since OR (updated_at = :since AND seq > :after)"
            " ORDER BY updated_at, seq LIMIT :limit",
            since=since,
            after=after_seq,
            limit=limit,
        )
        return [self._job_dict(row) for row in rows]

    def cancel(self, job_id: str) -> CancelOutcome:
        with self._tx() as tx:
            row = tx.row(f"SELECT status FROM jobs WHERE job_id = :j{self.db.for_update}", j=job_id)
            if row is None:
                return CancelOutcome.missing
            if row["status"] in FINAL:
                return CancelOutcome.final
            if row["status"] == "queued":
                self._finish(tx, job_id, "failed", None, cancelled_error(), None)
                return CancelOutcome.cancelled
            tx.run("UPDATE jobs SET cancel_requested = 1, updated_at = :now WHERE job_id = :j", now=tx.now, j=job_id)
            self._emit(tx, job_id, CANCEL_REQUESTED)
            return CancelOutcome.requested

    def current_attempt(self, job_id: str) -> int | None:
        rows = self._rows("SELECT attempt FROM jobs WHERE job_id = :j", j=job_id)
        return rows[0]["attempt"] if rows else None

    def counts(self) -> dict[str, int]:
        rows = self._rows("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {status: 0 for status in STATUSES} | {row["status"]: int(row["n"]) for row in rows}

    def requeues(self, job_id: str) -> list[dict[str, Any]]:
        """Each time the job went back to the queue: the attempt that ended, its worker, and why."""
        rows = self._rows("SELECT attempt, worker_id, at, error FROM requeues WHERE job_id = :j ORDER BY id", j=job_id)
        return [dict(row) | {"error": loads(row["error"])} for row in rows]
