"""Bookkeeping the store keeps beside the jobs: workers seen, webhook deliveries and dispatch attempts.

A webhook delivery is claimed before it starts (`claim_webhooks`): the replica that claims a pending one holds
it under a lease it renews while it delivers (`hold_webhook`), so with several replicas each delivery has one
sender, and one whose replica died is taken over once its lease runs out (at least once; once as a rule).
"""

from __future__ import annotations

from typing import Any

from orchestrator_stub.db.base import StoreBase
from orchestrator_stub.db.schema import loads


class RecordsMixin(StoreBase):
    """Workers, webhook deliveries and dispatch attempts."""

    def workers(self, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        """The `limit` most recently heard workers (each with `quarantined_until`, None unless in quarantine),
        and how many the store keeps."""
        with self.db.reading(self._clock) as tx:
            total = tx.scalar("SELECT COUNT(*) FROM workers")
            rows = tx.rows("SELECT * FROM workers ORDER BY last_seen DESC LIMIT :limit", limit=limit)
            stuck = self.quarantine.all(tx) if rows else {}
        workers = [
            dict(row) | {"gpu": loads(row["gpu"]), "quarantined_until": stuck.get(row["worker_id"])} for row in rows
        ]
        return workers, int(total)

    def webhook_attempts(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT attempt, at, status_code, error, ok FROM webhook_attempts WHERE job_id = :j ORDER BY id", j=job_id
        )
        return [dict(row) | {"ok": bool(row["ok"])} for row in rows]

    def dispatch_attempts(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT attempt, at, status_code, error FROM dispatch_attempts WHERE job_id = :j ORDER BY id", j=job_id
        )
        return [dict(row) for row in rows]

    def claim_webhooks(self, owner: str, lease_s: float, limit: int = 100) -> list[str]:
        """Take up to `limit` pending deliveries nobody holds (or whose holder's lease ran out) for `owner`."""
        with self._tx() as tx:
            rows = tx.rows(
                "UPDATE jobs SET webhook_owner = :owner, webhook_lease_until = :until WHERE job_id IN"
                " (SELECT job_id FROM jobs WHERE webhook_state = 'pending'"
                " AND (webhook_lease_until IS NULL OR webhook_lease_until <= :now)"
                f" ORDER BY seq LIMIT :limit{self.db.skip_locked}) RETURNING job_id",
                owner=owner,
                until=tx.now + lease_s,
                now=tx.now,
                limit=limit,
            )
        return [row["job_id"] for row in rows]

    def hold_webhook(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Renew `owner`'s lease on a delivery; False when it is no longer theirs (or no longer pending)."""
        with self._tx() as tx:
            return (
                tx.count(
                    "UPDATE jobs SET webhook_lease_until = :until"
                    " WHERE job_id = :j AND webhook_owner = :owner AND webhook_state = 'pending'",
                    until=tx.now + lease_s,
                    j=job_id,
                    owner=owner,
                )
                > 0
            )

    def release_webhooks(self, owner: str | None) -> int:
        """Let go of `owner`'s delivery claims (None: everyone's), for the next scan to take at once: at a clean
        stop, and at a SQLite stub's start (one process: every claim it finds is from before its restart)."""
        with self._tx() as tx:
            return tx.count(
                "UPDATE jobs SET webhook_owner = NULL, webhook_lease_until = NULL"
                " WHERE webhook_state = 'pending' AND webhook_owner IS NOT NULL"
                " AND (webhook_owner = :owner OR :anyone = 1)",
                owner=owner or "",
                anyone=int(owner is None),
            )

    def pending_webhook_url(self, job_id: str) -> str | None:
        """The job's notify_url while its webhook is still pending, else None."""
        rows = self._rows("SELECT notify_url FROM jobs WHERE job_id = :j AND webhook_state = 'pending'", j=job_id)
        return rows[0]["notify_url"] if rows else None

    def add_webhook_attempt(
        self, job_id: str, attempt: int, status_code: int | None, error: str | None, ok: bool
    ) -> None:
        with self._tx() as tx:
            tx.run(
                "INSERT INTO webhook_attempts (job_id, attempt, at, status_code, error, ok)"
                " VALUES (:j, :a, :now, :code, :error, :ok)",
                j=job_id,
                a=attempt,
                now=tx.now,
                code=status_code,
                error=error,
                ok=int(ok),
            )

    def set_webhook_state(self, job_id: str, state: str) -> None:
        with self._tx() as tx:
            tx.run(
                "UPDATE jobs SET webhook_state = :s, webhook_owner = NULL, webhook_lease_until = NULL"
                " WHERE job_id = :j",
                s=state,
                j=job_id,
            )

    def add_dispatch_attempt(self, job_id: str, attempt: int, status_code: int | None, error: str | None) -> None:
        with self._tx() as tx:
            tx.run(
                "INSERT INTO dispatch_attempts (job_id, attempt, at, status_code, error)"
                " VALUES (:j, :a, :now, :code, :error)",
                j=job_id,
                a=attempt,
                now=tx.now,
                code=status_code,
                error=error,
            )
