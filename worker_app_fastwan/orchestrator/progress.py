"""Progress reports to the orchestrator, throttled (in the spirit of cog's throttled webhook sender).

Fire and forget: `report` never blocks and does no I/O itself; a failed send is only logged at debug. Every
stage change is sent; within a stage at most one report per `min_interval_s`, and the latest held-back value
follows once the interval is over. The progress sent for a job never goes down. One job at a time: a report
for a new job starts its count afresh.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from worker_app_fastwan.core.clock import SYSTEM_CLOCK, Clock, wait_event
from worker_app_fastwan.core.job_progress import JobProgress
from worker_app_fastwan.core.protocol import ProgressUpdate
from worker_app_fastwan.core.schema import Stage

if TYPE_CHECKING:
    from worker_app_fastwan.orchestrator.client import OrchestratorClient

MAX_QUEUED = 8  # one per stage at most; bounds a caller that flips between stages


class ProgressThrottle:
    def __init__(
        self,
        client: OrchestratorClient | None,
        worker_id: str,
        min_interval_s: float = 1.0,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._client, self._worker_id, self._min_interval_s, self._clock = client, worker_id, min_interval_s, clock
        self._job_id: str | None = None
        self._best = 0.0
        self._queue: list[tuple[str, ProgressUpdate]] = []
        self._sent: tuple[str, Stage] | None = None  # job and stage of the last report sent
        self._sent_at = float("-inf")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def report_progress(self, p: JobProgress) -> None:
        """A `JobRunner` listener: forward the runner's view of the running job."""
        self.report(p.job_id, p.stage, p.progress, step=p.step, total_steps=p.total_steps)

    def report(
        self,
        job_id: str,
        stage: Stage,
        progress: float,
        step: int | None = None,
        total_steps: int | None = None,
        message: str = "",
    ) -> None:
        """Call from the event-loop thread."""
        if self._client is None or self._closing:
            return
        if job_id != self._job_id:
            self._job_id, self._best = job_id, 0.0
        self._best = max(self._best, min(max(progress, 0.0), 1.0))
        update = ProgressUpdate(
            worker_id=self._worker_id,
            stage=stage,
            progress=self._best,
            step=step,
            total_steps=total_steps,
            message=message,
        )
        last = self._queue[-1] if self._queue else None
        if last is not None and last[0] == job_id and (job_id, last[1].stage) in ((job_id, stage), self._sent):
            # The newest value of a stage wins; one held back for the stage already reported is superseded by
            # the next stage's (whose progress is at least as high).
            self._queue[-1] = (job_id, update)
        else:
            self._queue = [*self._queue, (job_id, update)][-MAX_QUEUED:]
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump(), name="progress-reports")

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Send what is queued without further throttling, waiting at most `timeout_s`."""
        self._closing = True
        self._wake.set()
        if self._task is not None and not self._task.done():
            _, pending = await asyncio.wait({self._task}, timeout=timeout_s)
            for task in pending:
                task.cancel()

    def _delay(self) -> float:
        job_id, update = self._queue[0]
        if self._closing or (job_id, update.stage) != self._sent:
            return 0.0
        return self._sent_at + self._min_interval_s - self._clock.now()

    async def _pump(self) -> None:
        assert self._client is not None
        while self._queue:
            delay = self._delay()
            if delay > 0:
                self._wake.clear()
                await wait_event(self._clock, self._wake, delay)
                continue
            job_id, update = self._queue.pop(0)
            self._sent, self._sent_at = (job_id, update.stage), self._clock.now()
            await self._client.post_progress(job_id, update)
