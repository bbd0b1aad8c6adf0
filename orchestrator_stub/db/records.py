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
            "SELECT attempt, at, status_code, error, ok, type FROM webhook_attempts WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        return [dict(row) | {"ok": bool(row["ok"])} for row in rows]

    def dispatch_attempts(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT attempt, at, status_code, error FROM dispatch_attempts WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [dict(row) for row in rows]

    def add_dispatch_attempt(self, job_id: str, attempt: int, status_code: int | None, error: str | None) -> None:
        with self._tx() as (db, _):
            db.execute(
                "INSERT INTO dispatch_attempts (job_id, attempt, at, status_code, error) VALUES (?, ?, ?, ?, ?)",
                (job_id, attempt, self._clock(), status_code, error),
            )
