"""The jobs a buffer worker holds, from their claim until their final status is delivered (or dropped).

What the heartbeat reports of them (stage, progress) and whether a cancel was asked for live here, so that
the claim loop only adds and removes jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from worker_app_fastwan.job_progress import JobProgress
from worker_app_fastwan.logs import job_context
from worker_app_fastwan.protocol import ClaimedJob
from worker_app_fastwan.schema import Stage

log = logging.getLogger(__name__)


@dataclass
class HeldJob:
    claimed: ClaimedJob
    stage: Stage | None = None
    progress: float = 0.0
    step: int | None = None
    cancel_requested: bool = False
    dropped: bool = False  # the orchestrator said 409: not ours any more, report nothing

    @property
    def job_id(self) -> str:
        return self.claimed.job_id


class HeldJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, HeldJob] = {}

    def add(self, claimed: ClaimedJob) -> HeldJob:
        held = self._jobs[claimed.job_id] = HeldJob(claimed)
        return held

    def remove(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[HeldJob]:
        return iter(list(self._jobs.values()))

    def ids(self) -> list[str]:
        return list(self._jobs)

    def first(self) -> HeldJob | None:
        return next(iter(self._jobs.values()), None)

    def on_progress(self, p: JobProgress) -> None:
        """A `JobRunner` listener: keep what the next heartbeat says of the job."""
        held = self._jobs.get(p.job_id)
        if held is not None:
            held.stage, held.progress, held.step = p.stage, p.progress, p.step

    def request_cancel(self, job_id: str) -> bool:
        """Mark a held job cancelled; True the first time (the caller then stops it), False otherwise."""
        held = self._jobs.get(job_id)
        if held is None or held.cancel_requested:
            return False
        held.cancel_requested = True
        with job_context(job_id):
            log.info("cancelling job", extra={"stage": held.stage.value if held.stage else None, "step": held.step})
        return True
