"""The event log: one row per state change of a job, written in the same transaction as the change.

A row's `id` only grows, so a reader resumes after the last id it saw (SSE's `Last-Event-ID`) and nothing is
sent twice or skipped. Because the log lives in the store, it survives restarts, and any process reading the
same database (a replica of a future PostgreSQL port, issue 27) can serve every stream: an in-process wake-up
only says "read again" (`orchestrator_stub/wakeup.py`), the rows are the truth.

Ids must become visible in id order for that to hold. Here they do: every write transaction takes the whole
database (`BEGIN IMMEDIATE`), one at a time. A port whose writers commit concurrently (PostgreSQL's sequences
hand out ids before commit) must keep that property, e.g. by taking one transaction-level advisory lock
before inserting an event.

Each event may also queue a webhook (`webhook_deliveries`), in the same transaction: a job chooses which with
`notify_events`, and so no webhook is ever skipped, whatever crashes when.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

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
    def of(row: sqlite3.Row) -> EventRow:
        return EventRow(row["id"], row["job_id"], row["type"], row["at"], row["data"])


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


def job_fields(row: sqlite3.Row, job_id: str) -> dict[str, Any]:
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


def emit(
    db: sqlite3.Connection,
    job_id: str,
    event_type: str,
    now: float,
    *,
    progress_every_s: float,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Append one event (inside the caller's transaction, after its change); returns whether it queued a
    webhook. A `job.progress` webhook is queued at most once per `progress_every_s` per job: the stream has
    every report, a receiver gets a sample."""
    row = db.execute(f"SELECT {JOB_FIELDS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    data = job_fields(row, job_id) | (extra or {})
    event_id = db.execute(
        "INSERT INTO job_events (job_id, type, at, data) VALUES (?, ?, ?, ?) RETURNING id",
        (job_id, event_type, now, dumps(data)),
    ).fetchone()[0]
    hook = WEBHOOK_TYPES.get(event_type)
    if hook is None or row["notify_url"] is None or hook not in wanted_webhooks(row["notify_events"]):
        return False
    if hook == JOB_PROGRESS:
        last = db.execute(
            "SELECT MAX(created_at) FROM webhook_deliveries WHERE job_id = ? AND type = ?", (job_id, JOB_PROGRESS)
        ).fetchone()[0]
        if last is not None and now - last < progress_every_s:
            return False
    db.execute(
        "INSERT INTO webhook_deliveries (job_id, event_id, type, state, next_at, created_at)"
        " VALUES (?, ?, ?, 'pending', ?, ?)",
        (job_id, event_id, hook, now, now),
    )
    return True
