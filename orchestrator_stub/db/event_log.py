"""Reading the event log (`events.py` writes it): what streams replay and follow, and how it stays bounded."""

from __future__ import annotations

from typing import Any

from orchestrator_stub.db import events
from orchestrator_stub.db.base import StoreBase
from orchestrator_stub.db.events import FINAL_EVENTS, FINAL_EVENTS_SQL, EventRow, final_event_type, job_fields
from orchestrator_stub.db.schema import FINAL, dumps, loads

FINAL_SQL = "('completed', 'failed')"


class EventLogMixin(StoreBase):
    """The event log's reads, its pruning, and the events of jobs from before it."""

    def events_after(self, after: int, limit: int, job_id: str | None = None) -> list[EventRow]:
        """Events with an id past `after`, oldest first, at most `limit`: all jobs', or one job's."""
        if job_id is None:
            rows = self._rows(
                "SELECT * FROM job_events WHERE id > :after ORDER BY id LIMIT :limit", after=after, limit=limit
            )
        else:
            rows = self._rows(
                "SELECT * FROM job_events WHERE job_id = :j AND id > :after ORDER BY id LIMIT :limit",
                j=job_id,
                after=after,
                limit=limit,
            )
        return [EventRow.of(row) for row in rows]

    def latest_event_id(self) -> int:
        """The id of the newest event (0 when there is none): a stream that starts now resumes after it."""
        return int(self._rows("SELECT COALESCE(MAX(id), 0) AS id FROM job_events")[0]["id"])

    def job_stream_start(self, job_id: str) -> tuple[bool, int | None, int]:
        """(whether the job exists, the id of its final event or None, the newest event's id): a stream that has
        the final event is over. One snapshot, so the three agree."""
        with self.db.reading(self._clock) as tx:
            known = tx.row("SELECT 1 FROM jobs WHERE job_id = :j", j=job_id) is not None
            final = tx.scalar(
                f"SELECT MAX(id) FROM job_events WHERE job_id = :j AND type IN {FINAL_EVENTS_SQL}", j=job_id
            )
            latest = tx.scalar("SELECT COALESCE(MAX(id), 0) FROM job_events")
        return known, None if final is None else int(final), int(latest)

    def prune_events(self, older_than: float) -> int:
        """Forget the events of jobs final since before `older_than`, except each one's final event (a stream
        of an old job still ends with it), and their finished webhook deliveries; returns events deleted."""
        with self._tx() as tx:
            old_jobs = f"SELECT job_id FROM jobs WHERE status IN {FINAL_SQL} AND completed_at < :before"
            deleted = tx.count(
                f"DELETE FROM job_events WHERE at < :before AND type NOT IN {FINAL_EVENTS_SQL}"
                f" AND job_id IN ({old_jobs})"
                " AND id NOT IN (SELECT event_id FROM webhook_deliveries WHERE state = 'pending')",
                before=older_than,
            )
            tx.run(
                f"DELETE FROM webhook_deliveries WHERE state <> 'pending' AND job_id IN ({old_jobs})",
                before=older_than,
            )
            return deleted

    def backfill_events(self) -> int:
        """Give each job that has no event (made by a stub from before the log) one event of its state now, so
        its stream shows it and ends when it is final; returns how many. Called at start-up; on PostgreSQL under
        the event lock, so replicas starting side by side backfill once."""
        with self._tx() as tx:
            if self.db.postgres:
                events.lock(tx)
            rows = tx.rows(
                "SELECT * FROM jobs WHERE NOT EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = jobs.job_id)"
                " ORDER BY seq"
            )
            for row in rows:
                error = loads(row["error"])
                status = row["status"]
                event_type = final_event_type(status, error) if status in FINAL else status
                data: dict[str, Any] = job_fields(row, row["job_id"]) | {
                    "input": loads(row["input"]),
                    "created_at": row["created_at"],
                }
                if event_type in FINAL_EVENTS:
                    data |= {"result": loads(row["result"])} if status == "completed" else {"error": error}
                tx.run(
                    "INSERT INTO job_events (job_id, type, at, data) VALUES (:j, :t, :at, :data)",
                    j=row["job_id"],
                    t=event_type,
                    at=row["updated_at"],
                    data=dumps(data),
                )
            return len(rows)
