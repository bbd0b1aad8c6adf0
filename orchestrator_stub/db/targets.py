"""The output targets handed out (protocol v1.2): which key belongs to which job and attempt, and whether the
object stored there was checked against the job's result."""

from __future__ import annotations

from typing import Any

from orchestrator_stub.db.base import StoreBase


class TargetsMixin(StoreBase):
    """Output targets: recorded when issued, looked up when a result names one, marked once checked."""

    def add_output_target(
        self, job_id: str, attempt: int, video_key: str, poster_key: str | None, expires_at: float
    ) -> None:
        with self._tx() as tx:
            tx.run(
                "INSERT INTO output_targets (video_key, job_id, attempt, poster_key, issued_at, expires_at)"
                " VALUES (:video, :j, :a, :poster, :now, :expires)",
                video=video_key,
                j=job_id,
                a=attempt,
                poster=poster_key,
                now=tx.now,
                expires=expires_at,
            )

    def output_target(self, job_id: str, video_key: str) -> dict[str, Any] | None:
        """The target issued for `job_id` under `video_key`, or None (not one of this job's targets)."""
        rows = self._rows(
            "SELECT video_key, job_id, attempt, poster_key, issued_at, expires_at, verified_at FROM output_targets"
            " WHERE video_key = :video AND job_id = :j",
            video=video_key,
            j=job_id,
        )
        return dict(rows[0]) if rows else None

    def mark_target_verified(self, video_key: str) -> None:
        with self._tx() as tx:
            tx.run("UPDATE output_targets SET verified_at = :now WHERE video_key = :video", now=tx.now, video=video_key)
