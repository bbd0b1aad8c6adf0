"""Webhook deliveries: which one is due, its attempts, and how it ends. The sender (`webhooks.py`) decides
nothing about order or state; it asks `due_webhooks` and reports each attempt.

Each delivery is one event's webhook (`events.emit` queues it in the event's transaction). A job's deliveries
go out in id order: a later one waits until the earlier one is delivered or given up. A delivery being sent is
leased (`lease_until`), so a second sender (a replica of a future PostgreSQL port) never takes it meanwhile; a
lease that runs out because its process died makes it due again: delivery is at-least-once.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from orchestrator_stub.db.base import StoreBase
from orchestrator_stub.db.events import FINAL_EVENTS_SQL, FINAL_WEBHOOKS, JOB_PROGRESS, WEBHOOK_TYPES


@dataclass(frozen=True)
class DueWebhook:
    delivery_id: int
    job_id: str
    event_id: int
    type: str  # job.started, job.progress, job.completed, job.failed, job.cancelled
    attempt: int  # the number of the attempt to make now (1 for the first)
    url: str
    body: str | None  # the body of the first attempt, which every retry sends again; None before it
    event_at: float
    event_data: str  # the event's stored JSON

    @property
    def webhook_id(self) -> str:
        """Standard Webhooks' `webhook-id`: the same on every attempt, unique beyond this database (job ids are)."""
        return f"msg_{self.job_id}_{self.event_id}"


class DeliveriesMixin(StoreBase):
    """Which webhook is due, its attempts and its end."""

    def due_webhooks(self, limit: int, lease_s: float, max_attempts: int) -> list[DueWebhook]:
        """Take up to `limit` deliveries due now, each the oldest pending one of its job, leased for `lease_s`.

        One that already had `max_attempts` attempts (the setting went down across a restart) is given up here.
        """
        now = self._clock()
        due: list[DueWebhook] = []
        with self._tx() as (db, _):
            rows = db.execute(
                "SELECT d.id, d.job_id, d.event_id, d.type, d.attempts, d.body, j.notify_url, e.at, e.data"
                " FROM webhook_deliveries d JOIN jobs j ON j.job_id = d.job_id JOIN job_events e ON e.id = d.event_id"
                " WHERE d.state = 'pending' AND d.next_at <= ? AND (d.lease_until IS NULL OR d.lease_until <= ?)"
                " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p"
                " WHERE p.job_id = d.job_id AND p.state = 'pending' AND p.id < d.id)"
                " ORDER BY d.next_at, d.id LIMIT ?",
                (now, now, limit),
            ).fetchall()
            for row in rows:
                if row["attempts"] >= max_attempts:
                    self._end_delivery(db, row["id"], row["job_id"], row["type"], "gave_up", now)
                    continue
                db.execute("UPDATE webhook_deliveries SET lease_until = ? WHERE id = ?", (now + lease_s, row["id"]))
                due.append(
                    DueWebhook(
                        row["id"],
                        row["job_id"],
                        row["event_id"],
                        row["type"],
                        row["attempts"] + 1,
                        row["notify_url"],
                        row["body"],
                        row["at"],
                        row["data"],
                    )
                )
        return due

    def freeze_webhook_body(self, delivery_id: int, body: str) -> str:
        """Keep `body` as the delivery's body unless it has one already; returns the one kept (every retry of
        one event sends the same bytes)."""
        with self._tx() as (db, _):
            db.execute("UPDATE webhook_deliveries SET body = ? WHERE id = ? AND body IS NULL", (body, delivery_id))
            return str(db.execute("SELECT body FROM webhook_deliveries WHERE id = ?", (delivery_id,)).fetchone()[0])

    def webhook_attempt_done(
        self, delivery_id: int, attempt: int, status_code: int | None, error: str | None, *, retry_at: float | None
    ) -> str:
        """Record one attempt (`error` None: a 2xx); returns the delivery's state now: `delivered`, `pending`
        (tried again at `retry_at`), `gave_up` (no `retry_at`), or `superseded`: a failed `job.progress` while a
        later webhook of the job waits is not retried, since progress webhooks are a sample anyway and a stale
        one would only hold back the news behind it."""
        now = self._clock()
        with self._tx() as (db, _):
            row = db.execute("SELECT job_id, type FROM webhook_deliveries WHERE id = ?", (delivery_id,)).fetchone()
            db.execute(
                "INSERT INTO webhook_attempts (job_id, attempt, at, status_code, error, ok, delivery_id, type)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (row["job_id"], attempt, now, status_code, error, int(error is None), delivery_id, row["type"]),
            )
            db.execute(
                "UPDATE webhook_deliveries SET attempts = ?, lease_until = NULL WHERE id = ?", (attempt, delivery_id)
            )
            later = db.execute(
                "SELECT 1 FROM webhook_deliveries WHERE job_id = ? AND id > ?", (row["job_id"], delivery_id)
            ).fetchone()
            if error is None:
                state = "delivered"
            elif row["type"] == JOB_PROGRESS and later is not None:
                state = "superseded"
            elif retry_at is None:
                state = "gave_up"
            else:
                db.execute("UPDATE webhook_deliveries SET next_at = ? WHERE id = ?", (retry_at, delivery_id))
                return "pending"
            self._end_delivery(db, delivery_id, row["job_id"], row["type"], state, now)
            if later is not None:
                self._wrote_webhooks = True  # the next one of this job is due now: wake the sender
        return state

    def _end_delivery(
        self, db: sqlite3.Connection, delivery_id: int, job_id: str, hook: str, state: str, now: float
    ) -> None:
        db.execute(
            "UPDATE webhook_deliveries SET state = ?, lease_until = NULL, done_at = ? WHERE id = ?",
            (state, now, delivery_id),
        )
        if hook in FINAL_WEBHOOKS:  # the job's `webhook_state` follows its final webhook
            db.execute("UPDATE jobs SET webhook_state = ? WHERE job_id = ?", (state, job_id))

    def restart_webhooks(self) -> int:
        """At start-up: every pending delivery is due now (one in flight or backing off when the stub stopped is
        tried at once, as the stub always did after a restart), and a job a stub from before the deliveries
        table left `pending` gets its delivery, with the attempts it had. Returns how many are pending.

        Single process only: a replica of a future port must leave other replicas' leases alone.
        """
        now = self._clock()
        with self._tx() as (db, _):
            legacy = db.execute(
                "SELECT j.job_id,"
                f" (SELECT MAX(e.id) FROM job_events e WHERE e.job_id = j.job_id AND e.type IN {FINAL_EVENTS_SQL})"
                " AS event_id, (SELECT COUNT(*) FROM webhook_attempts a WHERE a.job_id = j.job_id) AS attempts"
                " FROM jobs j WHERE j.webhook_state = 'pending'"
                " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = j.job_id)"
            ).fetchall()
            for row in legacy:
                if row["event_id"] is None:  # backfill_events runs first; a job without it has nothing to tell
                    continue
                event_type = db.execute("SELECT type FROM job_events WHERE id = ?", (row["event_id"],)).fetchone()[0]
                db.execute(
                    "INSERT INTO webhook_deliveries (job_id, event_id, type, state, attempts, next_at, created_at)"
                    " VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                    (row["job_id"], row["event_id"], WEBHOOK_TYPES[event_type], row["attempts"], now, now),
                )
            db.execute(
                "UPDATE webhook_deliveries SET lease_until = NULL, next_at = ? WHERE state = 'pending' AND next_at > ?",
                (now, now),
            )
            db.execute("UPDATE webhook_deliveries SET lease_until = NULL WHERE state = 'pending'")
            return int(db.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'").fetchone()[0])
