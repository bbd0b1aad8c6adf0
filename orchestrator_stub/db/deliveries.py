"""Webhook deliveries: which one is due, its attempts, and how it ends. The sender (`webhooks.py`) decides
nothing about order or state; it asks `due_webhooks` and reports each attempt.

Each delivery is one event's webhook (`events.write` queues it in the event's transaction). A job's deliveries
go out in id order: a later one waits until the earlier one is delivered or given up. A delivery being sent is
leased (`lease_until`), so no other sender takes it meanwhile: every replica on one PostgreSQL database runs a
sender, and `due_webhooks` takes rows with `FOR UPDATE SKIP LOCKED`, so two replicas asking at once get
different deliveries, never the same one. A lease that runs out because its process died makes the delivery
due again, for any replica: delivery is at-least-once, and once in the normal case.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator_stub.db import events
from orchestrator_stub.db.base import StoreBase
from orchestrator_stub.db.engine import Tx
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
        due: list[DueWebhook] = []
        # PostgreSQL: rows another replica is taking right now are skipped, never waited for nor taken twice.
        skip = " FOR UPDATE OF d SKIP LOCKED" if self.db.postgres else ""
        with self._tx() as tx:
            rows = tx.rows(
                "SELECT d.id, d.job_id, d.event_id, d.type, d.attempts, d.body, j.notify_url, e.at, e.data"
                " FROM webhook_deliveries d JOIN jobs j ON j.job_id = d.job_id JOIN job_events e ON e.id = d.event_id"
                " WHERE d.state = 'pending' AND d.next_at <= :now AND (d.lease_until IS NULL OR d.lease_until <= :now)"
                " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p"
                " WHERE p.job_id = d.job_id AND p.state = 'pending' AND p.id < d.id)"
                f" ORDER BY d.next_at, d.id LIMIT :limit{skip}",
                now=tx.now,
                limit=limit,
            )
            for row in rows:
                if row["attempts"] >= max_attempts:
                    self._end_delivery(tx, row["id"], row["job_id"], row["type"], "gave_up")
                    continue
                tx.run(
                    "UPDATE webhook_deliveries SET lease_until = :until WHERE id = :id",
                    until=tx.now + lease_s,
                    id=row["id"],
                )
                due.append(
                    DueWebhook(
                        int(row["id"]),
                        row["job_id"],
                        int(row["event_id"]),
                        row["type"],
                        row["attempts"] + 1,
                        row["notify_url"],
                        row["body"],
                        float(row["at"]),
                        row["data"],
                    )
                )
        return due

    def freeze_webhook_body(self, delivery_id: int, body: str) -> str:
        """Keep `body` as the delivery's body unless it has one already; returns the one kept (every retry of
        one event sends the same bytes)."""
        with self._tx() as tx:
            tx.run(
                "UPDATE webhook_deliveries SET body = :body WHERE id = :id AND body IS NULL", body=body, id=delivery_id
            )
            return str(tx.scalar("SELECT body FROM webhook_deliveries WHERE id = :id", id=delivery_id))

    def webhook_attempt_done(
        self,
        delivery_id: int,
        attempt: int,
        status_code: int | None,
        error: str | None,
        *,
        retry_at: float | None = None,
        retry_in: float | None = None,
    ) -> str:
        """Record one attempt (`error` None: a 2xx); returns the delivery's state now: `delivered`, `pending`
        (tried again at `retry_at`, or `retry_in` seconds from now by the store's clock), `gave_up` (neither),
        or `superseded`: a failed `job.progress` while a later webhook of the job waits is not retried, since
        progress webhooks are a sample anyway and a stale one would only hold back the news behind it."""
        with self._tx() as tx:
            row = tx.row("SELECT job_id, type FROM webhook_deliveries WHERE id = :id", id=delivery_id)
            assert row is not None, "an attempt of a delivery that is not there"
            tx.run(
                "INSERT INTO webhook_attempts (job_id, attempt, at, status_code, error, ok, delivery_id, type)"
                " VALUES (:j, :a, :now, :code, :error, :ok, :d, :t)",
                j=row["job_id"],
                a=attempt,
                now=tx.now,
                code=status_code,
                error=error,
                ok=int(error is None),
                d=delivery_id,
                t=row["type"],
            )
            tx.run(
                "UPDATE webhook_deliveries SET attempts = :a, lease_until = NULL WHERE id = :id",
                a=attempt,
                id=delivery_id,
            )
            later = tx.row(
                "SELECT 1 FROM webhook_deliveries WHERE job_id = :j AND id > :id", j=row["job_id"], id=delivery_id
            )
            if retry_in is not None:
                retry_at = tx.now + retry_in
            if error is None:
                state = "delivered"
            elif row["type"] == JOB_PROGRESS and later is not None:
                state = "superseded"
            elif retry_at is None:
                state = "gave_up"
            else:
                tx.run("UPDATE webhook_deliveries SET next_at = :at WHERE id = :id", at=retry_at, id=delivery_id)
                return "pending"
            self._end_delivery(tx, delivery_id, row["job_id"], row["type"], state)
            if later is not None:
                tx.webhooks = True  # the next one of this job is due now: wake the senders
        return state

    @staticmethod
    def _end_delivery(tx: Tx, delivery_id: int, job_id: str, hook: str, state: str) -> None:
        tx.run(
            "UPDATE webhook_deliveries SET state = :s, lease_until = NULL, done_at = :now WHERE id = :id",
            s=state,
            now=tx.now,
            id=delivery_id,
        )
        if hook in FINAL_WEBHOOKS:  # the job's `webhook_state` follows its final webhook
            tx.run("UPDATE jobs SET webhook_state = :s WHERE job_id = :j", s=state, j=job_id)

    def restart_webhooks(self) -> int:
        """At start-up: a job a stub from before the deliveries table left `pending` gets its delivery, with the
        attempts it had; on SQLite (one process per file) every pending delivery is also due now: one in flight
        or backing off when the stub stopped is tried at once, as the stub always did after a restart. On
        PostgreSQL the other replicas' leases are theirs: a delivery this replica had in flight when it died is
        due again when its lease runs out. Returns how many are pending."""
        with self._tx() as tx:
            if self.db.postgres:
                events.lock(tx)  # replicas starting side by side convert the old ones once
            legacy = tx.rows(
                "SELECT j.job_id,"
                f" (SELECT MAX(e.id) FROM job_events e WHERE e.job_id = j.job_id AND e.type IN {FINAL_EVENTS_SQL})"
                " AS event_id, (SELECT COUNT(*) FROM webhook_attempts a WHERE a.job_id = j.job_id) AS attempts"
                " FROM jobs j WHERE j.webhook_state = 'pending'"
                " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = j.job_id)"
            )
            for row in legacy:
                if row["event_id"] is None:  # backfill_events runs first; a job without it has nothing to tell
                    continue
                event_type = tx.scalar("SELECT type FROM job_events WHERE id = :id", id=row["event_id"])
                tx.run(
                    "INSERT INTO webhook_deliveries (job_id, event_id, type, state, attempts, next_at, created_at)"
                    " VALUES (:j, :e, :t, 'pending', :a, :now, :now)",
                    j=row["job_id"],
                    e=row["event_id"],
                    t=WEBHOOK_TYPES[event_type],
                    a=row["attempts"],
                    now=tx.now,
                )
            if not self.db.postgres:
                tx.run(
                    "UPDATE webhook_deliveries SET lease_until = NULL, next_at = :now"
                    " WHERE state = 'pending' AND next_at > :now",
                    now=tx.now,
                )
                tx.run("UPDATE webhook_deliveries SET lease_until = NULL WHERE state = 'pending'")
            return int(tx.scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'"))
