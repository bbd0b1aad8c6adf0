"""Bookkeeping the store keeps beside the jobs: workers seen, webhook and dispatch attempts (which webhook is
due, and how a delivery ends, is `deliveries.py`)."""

from __future__ import annotations

from typing import Any

from orchestrator_stub.db.base import StoreBase
from orchestrator_stub.db.schema import loads


class RecordsMixin(StoreBase):
    """Workers, webhook and dispatch attempts."""

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
            "SELECT attempt, at, status_code, error, ok, type FROM webhook_attempts WHERE job_id = :j ORDER BY id",
            j=job_id,
        )
        return [dict(row) | {"ok": bool(row["ok"])} for row in rows]

    def dispatch_attempts(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT attempt, at, status_code, error FROM dispatch_attempts WHERE job_id = :j ORDER BY id", j=job_id
        )
        return [dict(row) for row in rows]

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
