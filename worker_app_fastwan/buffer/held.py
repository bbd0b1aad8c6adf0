"""The jobs a buffer slot holds, from their claim until their final status is delivered (or dropped): at
most two with pipelining, one generating and one finished (uploading or reporting).

What the heartbeat reports of them (stage, progress), whether a cancel was asked for, and whether a finished
one's report is failing (claims pause then) live here, so that the claim loop only adds and removes jobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from worker_app_fastwan.core.job_progress import JobProgress
from worker_app_fastwan.core.logs import job_context
from worker_app_fastwan.core.protocol import ClaimedJob
from worker_app_fastwan.core.schema import Stage

log = logging.getLogger(__name__)


@dataclass
class HeldJob:
    claimed: ClaimedJob
    stage: Stage | None = None
    progress: float = 0.0
    step: int | None = None
    cancel_requested: bool = False
    dropped: bool = False  # the orchestrator said 409: not ours any more, report nothing
    generated: bool = False  # the GPU's part is over (video written, or failed): uploading or reporting
    stalled: bool = False  # its final status's delivery failed at least once and is being retried
    running: asyncio.Task[None] | None = None  # the `running` report
    upload: asyncio.Future[Any] | None = None  # the upload, while it runs beside the next job

    @property
    def job_id(self) -> str:
        return self.claimed.job_id

    @property
    def attempt(self) -> int:
        return self.claimed.attempt

    def mark_stalled(self) -> None:
        if not self.stalled:
            self.stalled = True
            with job_context(self.job_id):
                log.warning("final status not delivered yet; retrying")


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

    def secrets(self) -> dict[str, str]:
        """{job_id: attempt secret} of the held jobs whose claim came with one (v1.2)."""
        return {h.job_id: h.claimed.attempt_secret for h in self._jobs.values() if h.claimed.attempt_secret}

    def first(self) -> HeldJob | None:
        return next(iter(self._jobs.values()), None)

    def generating(self) -> HeldJob | None:
        """The job whose GPU part is not over (claimed, downloading, generating), if any."""
        return next((h for h in self._jobs.values() if not h.generated), None)

    def stalled(self) -> bool:
        return any(h.stalled for h in self._jobs.values())

    def on_progress(self, p: JobProgress) -> None:
        """A `JobRunner` listener: keep what the next heartbeat says of the job."""
        held = self._jobs.get(p.job_id)
        if held is not None:
            held.stage, held.progress, held.step = p.stage, p.progress, p.step

    def request_cancel(self, job_id: str) -> HeldJob | None:
        """Mark a held job cancelled; the job the first time (the caller then stops it), else None."""
        held = self._jobs.get(job_id)
        if held is None or held.cancel_requested:
            return None
        held.cancel_requested = True
        with job_context(job_id):
            log.info("cancelling job", extra={"stage": held.stage.value if held.stage else None, "step": held.step})
        return held
