"""Bookkeeping the store keeps beside the jobs: workers seen, webhook and dispatch attempts."""

from __future__ import annotations

from typing import Any

from orchestrator_stub.db.base import StoreBase
from orchestrator_stub.db.schema import loads


class RecordsMixin(StoreBase):
    """Workers, webhook deliveries and dispatch attempts."""

    def workers(self, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        """The `limit` most recently heard workers, and how many the store keeps."""
        with self._lock:
            total = self._conn.execute("SELECT COUNT(*) FROM workers").fetchone()[0]
            rows = self._conn.execute("SELECT * FROM workers ORDER BY last_seen DESC LIMIT ?", (limit,)).fetchall()
        return [dict(row) | {"gpu": loads(row["gpu"])} for row in rows], total

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
