"""The event log: one row per state change of a job, written in the same transaction as the change.

A row's `id` only grows, so a reader resumes after the last id it saw (SSE's `Last-Event-ID`) and nothing is
sent twice or skipped. Because the log lives in the store, it survives restarts, and every replica reading the
same database serves every stream: a wake-up (in-process on SQLite, LISTEN/NOTIFY between replicas on
PostgreSQL) only says "read again" (`orchestrator_stub/wakeup.py`), the rows are the truth.

Ids must become visible in id order for that to hold: a reader that saw id 11 must never later find a 10. On
SQLite every write transaction takes the whole database (`BEGIN IMMEDIATE`), one at a time. On PostgreSQL
writers commit concurrently and a sequence hands out ids before commit, so the rows are written at the end of
the transaction (`emit` only prepares one, `write` inserts them) under one transaction-level advisory lock
(EVENT_LOCK), held from the first id to COMMIT: ids are taken and made visible one transaction at a time. The
lock is the last one such a transaction takes (it waits on no row after it), so it can take part in no deadlock,
and it is held for a few inserts and the commit only.

Each event may also queue a webhook (`webhook_deliveries`), in the same transaction: a job chooses which with
`notify_events`, and so no webhook is ever skipped, whatever crashes when.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import RowMapping

from orchestrator_stub.db.engine import Tx
from orchestrator_stub.db.schema import dumps

QUEUED = "queued"
CLAIMED = "claimed"
DISPATCHED = "dispatched"  # claimed by the Salad-style dispatcher, which posts it to a queue-mode worker
RUNNING = "running"
PROGRESS = "progress"
CANCEL_REQUESTED = "cancel_requested"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
EVENT_TYPES = (QUEUED, CLAIMED, DISPATCHED, RUNNING, PROGRESS, CANCEL_REQUESTED, COMPLETED, FAILED, CANCELLED)
FINAL_EVENTS = (COMPLETED, FAILED, CANCELLED)
FINAL_EVENTS_SQL = "('completed', 'failed', 'cancelled')"
EVENT_LOCK = 0x57_1B_DB_02  # PostgreSQL advisory lock: event ids taken and committed one transaction at a time

# The Standard Webhooks event types, and the event that makes each.
JOB_STARTED = "job.started"
JOB_PROGRESS = "job.progress"
NOTIFY_EVENTS = (JOB_STARTED, JOB_PROGRESS, "job.completed", "job.failed", "job.cancelled")
DEFAULT_NOTIFY_EVENTS = ("job.completed", "job.failed", "job.cancelled")
WEBHOOK_TYPES = {
    CLAIMED: JOB_STARTED,
    DISPATCHED: JOB_STARTED,
    PROGRESS: JOB_PROGRESS,
    COMPLETED: "job.completed",
    FAILED: "job.failed",
    CANCELLED: "job.cancelled",
}
FINAL_WEBHOOKS = ("job.completed", "job.failed", "job.cancelled")


@dataclass(frozen=True)
class EventRow:
    """One stored event; `data` is its JSON text as stored (the job's fields after the change)."""

    id: int
    job_id: str
    type: str
    at: float
    data: str

    @staticmethod
    def of(row: RowMapping) -> EventRow:
        return EventRow(int(row["id"]), row["job_id"], row["type"], float(row["at"]), row["data"])


@dataclass(frozen=True)
class Pending:
    """An event made inside a transaction, inserted at its end (`write`): its data is the job as of the change."""

    job_id: str
    type: str
    at: float
    data: str
    hook: str | None  # the webhook it queues, if the job asked for that type


def final_event_type(status: str, error: dict[str, Any] | None) -> str:
    """The event a final status makes: a cancelled job is `failed` with error code `cancelled`."""
    if status == "completed":
        return COMPLETED
    return CANCELLED if (error or {}).get("code") == "cancelled" else FAILED


def wanted_webhooks(notify_events: str | None) -> tuple[str, ...]:
    """The webhook types a job asked for (its stored `notify_events`), the final ones by default."""
    return tuple(json.loads(notify_events)) if notify_events else DEFAULT_NOTIFY_EVENTS


JOB_FIELDS = (
    "status, stage, progress, step, total_steps, message, attempt, worker_id, cancel_requested,"
    " notify_url, notify_events"
)


def job_fields(row: RowMapping, job_id: str) -> dict[str, Any]:
    """What every event carries: the job's state after the change, named as the job view names it."""
    return {
        "job_id": job_id,
        "status": row["status"],
        "stage": row["stage"],
        "progress": row["progress"],
        "step": row["step"],
        "total_steps": row["total_steps"],
        "message": row["message"],
        "attempts": row["attempt"],
        "worker_id": row["worker_id"],
        "cancel_requested": bool(row["cancel_requested"]),
    }


def emit(tx: Tx, job_id: str, event_type: str, extra: dict[str, Any] | None = None) -> None:
    """Make one event of the job (inside the caller's transaction, after its change): the job's fields are read
    now, the row is inserted when the transaction ends (`write`)."""
    row = tx.row(f"SELECT {JOB_FIELDS} FROM jobs WHERE job_id = :j", j=job_id)
    assert row is not None, "an event of a job that is not there"
    hook = WEBHOOK_TYPES.get(event_type)
    if hook is not None and (row["notify_url"] is None or hook not in wanted_webhooks(row["notify_events"])):
        hook = None
    data = dumps(job_fields(row, job_id) | (extra or {}))
    assert data is not None
    tx.events.append(Pending(job_id, event_type, tx.now, data, hook))


def write(tx: Tx, *, progress_every_s: float, postgres: bool) -> None:
    """Insert the transaction's events, and the webhooks they queue, in order (just before COMMIT). A
    `job.progress` webhook is queued at most once per `progress_every_s` per job: the stream has every report, a
    receiver gets a sample."""
    if not tx.events:
        return
    if postgres:
        lock(tx)
    for event in tx.events:
        event_id = tx.scalar(
            "INSERT INTO job_events (job_id, type, at, data) VALUES (:j, :t, :at, :data) RETURNING id",
            j=event.job_id,
            t=event.type,
            at=event.at,
            data=event.data,
        )
        if event.hook is None:
            continue
        if event.hook == JOB_PROGRESS:
            last = tx.scalar(
                "SELECT MAX(created_at) FROM webhook_deliveries WHERE job_id = :j AND type = :t",
                j=event.job_id,
                t=JOB_PROGRESS,
            )
            if last is not None and event.at - last < progress_every_s:
                continue
        tx.run(
            "INSERT INTO webhook_deliveries (job_id, event_id, type, state, next_at, created_at)"
            " VALUES (:j, :e, :t, 'pending', :at, :at)",
            j=event.job_id,
            e=event_id,
            t=event.hook,
            at=event.at,
        )
        tx.webhooks = True


def lock(tx: Tx) -> None:
    """PostgreSQL: take the event lock (until COMMIT) before writing events outside `write`."""
    tx.run("SELECT pg_advisory_xact_lock(:lock)", lock=EVENT_LOCK)
