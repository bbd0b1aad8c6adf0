"""One held job's life in a buffer slot, after its claim: generate, then finish in the background.

`JobLifecycle.run()` is the GPU's part and returns once the MP4 is written (or the job failed), so the claim
loop (`slot.py`) may claim the next job while this one's upload and final status go on in a
`finishing` task (pipelining). Every path ends in a final status through the on-disk outbox, unless the
orchestrator said the job is no longer ours. A cancel (heartbeat answer, `gone`) stops the job wherever it
is: the GPU process at its next safe point, or the upload now; the drain deadline abandons an upload.
Kept apart from the loop so that the loop reads as claim-and-drain only, and each job's ending is one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from worker_app_fastwan.buffer.held import HeldJob, HeldJobs
from worker_app_fastwan.buffer.outbox import Outbox, send_final
from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.protocol import ClaimedJob, StatusUpdate
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.core.stopping import Stopping
from worker_app_fastwan.job.result import Generated
from worker_app_fastwan.job.runner import JobRunner
from worker_app_fastwan.orchestrator.client import OrchestratorClient, OrchestratorRejected

log = logging.getLogger(__name__)


class JobLifecycle:
    """The jobs of one slot from claim to final status; `finishing` holds the tasks still uploading or
    reporting (the loop's backpressure counts them), `changed` is set whenever one ends or stalls."""

    def __init__(
        self,
        runner: JobRunner,
        client: OrchestratorClient,
        outbox: Outbox,
        worker_id: str,
        held: HeldJobs,
        deliver: Callable[[Awaitable[object]], Awaitable[None]],
    ) -> None:
        self.runner, self.client, self.outbox, self.worker_id, self.held = runner, client, outbox, worker_id, held
        self._deliver = deliver  # the loop's bound on outbox deliveries (none, or OUTBOX_FLUSH_TIMEOUT_S in a drain)
        self.drain_deadline = asyncio.Event()  # DRAIN_TIMEOUT_S after stop(): an upload still going is abandoned
        self.changed = asyncio.Event()  # a held job was reported, or its report started failing
        self.finishing: set[asyncio.Task[None]] = set()
        self.done = 0

    async def room(self, limit: int, stopping: Stopping) -> bool:
        """Wait until at most `limit` jobs are finishing and no final status is failing to go out (claims
        pause meanwhile: nothing piles up behind an orchestrator that is down); False if stopping first."""
        paused = False
        while not stopping.is_set():
            if len(self.finishing) <= limit and not self.held.stalled():
                if paused:
                    log.info("claiming resumed")
                return True
            if self.held.stalled() and not paused:
                paused = True
                log.warning("claiming paused: a final status is not going out", extra={"job_ids": self.held.ids()})
            self.changed.clear()
            await stopping.unless(self.changed.wait())
        return False

    async def unless_stalled(self, claim: Awaitable[ClaimedJob | None]) -> ClaimedJob | None:
        """The claim's job (None: nothing queued), or None at once if a final status starts failing meanwhile."""
        claiming = asyncio.ensure_future(claim)
        try:
            while not claiming.done() and not self.held.stalled():
                self.changed.clear()
                changed = asyncio.ensure_future(self.changed.wait())
                await asyncio.wait({claiming, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
        finally:
            if not claiming.done():
                claiming.cancel()
        return claiming.result() if claiming.done() and not claiming.cancelled() else None

    async def run(self, held: HeldJob) -> None:
        """Report `running`, generate; the upload and the final status go on in a `finishing` task."""
        held.running = asyncio.create_task(self._report_running(held))
        outcome = await self._generate(held)
        held.generated = True
        task = asyncio.create_task(self._finish(held, outcome), name=f"finish-{held.job_id}")
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)

    def cancel(self, held: HeldJob) -> None:
        """Stop the job where it is: at the GPU process's next safe point, or its upload now."""
        self.runner.cancel(held.job_id)
        if held.upload is not None:
            held.upload.cancel()

    async def _generate(self, held: HeldJob) -> Generated | StatusUpdate:
        """The GPU's part: the video, or the job's failed status."""
        if held.cancel_requested or held.dropped:
            return self._failed(held, JobFailure(ErrorCode.cancelled, "cancelled before it started"))
        try:
            generated = await self.runner.generate(held.job_id, held.claimed.input, queued_s=0.0)
            generated.target = held.claimed.output  # v1.2: the upload goes there, not to this worker's storage
            return generated
        except JobFailure as exc:
            return self._failed(held, exc)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the job is reported, and retried
            return self._failed(held, self._unexpected(exc))

    async def _finish(self, held: HeldJob, outcome: Generated | StatusUpdate) -> None:
        """Upload (a generated video) and deliver the final status; the job is held until then."""
        try:
            update = await self._upload(held, outcome) if isinstance(outcome, Generated) else outcome
            if held.running is not None:
                held.running.cancel()
            if held.dropped:
                log.warning("job dropped: the orchestrator says it is no longer ours")
            else:
                on_retry = lambda: self._stalled(held)  # noqa: E731
                await self._deliver(send_final(self.outbox, self.client, held.job_id, update, on_retry))
        finally:
            self.held.remove(held.job_id)
            self.done += 1
            self.changed.set()

    def _stalled(self, held: HeldJob) -> None:
        """A final status's delivery failed and is retried: no claims until it went out."""
        held.mark_stalled()
        self.changed.set()

    async def _upload(self, held: HeldJob, generated: Generated) -> StatusUpdate:
        """Upload beside the next job; a cancel or the drain deadline abandons it."""
        held.upload = upload = asyncio.ensure_future(self.runner.finish(generated))
        deadline = asyncio.ensure_future(self.drain_deadline.wait())
        await asyncio.wait({upload, deadline}, return_when=asyncio.FIRST_COMPLETED)
        deadline.cancel()
        if not upload.done():
            upload.cancel()
            return self._failed(held, JobFailure(ErrorCode.timeout, "the upload was stopped by the drain deadline"))
        if upload.cancelled():
            return self._failed(held, JobFailure(ErrorCode.cancelled, "cancelled while uploading"))
        try:
            result = upload.result()
        except JobFailure as exc:
            return self._failed(held, exc)
        except Exception as exc:  # noqa: BLE001 - as in _generate
            return self._failed(held, self._unexpected(exc))
        return StatusUpdate(worker_id=self.worker_id, status="completed", result=result, attempt=held.attempt)

    def _unexpected(self, exc: Exception) -> JobFailure:
        log.error("job failed unexpectedly", exc_info=exc)
        return JobFailure(ErrorCode.internal, f"the worker failed to run the job: {type(exc).__name__}")

    def _failed(self, held: HeldJob, failure: JobFailure) -> StatusUpdate:
        return StatusUpdate(worker_id=self.worker_id, status="failed", error=failure.to_error(), attempt=held.attempt)

    async def _report_running(self, held: HeldJob) -> None:
        # Not outboxed, and in the background: the job need not wait for a slow orchestrator.
        running = StatusUpdate(worker_id=self.worker_id, status="running", attempt=held.attempt)
        try:
            outcome = await self.client.post_status(held.job_id, running)
        except (OrchestratorRejected, ValueError) as exc:
            log.warning("running status refused", extra={"error": str(exc)})
            return
        if outcome == "gone":
            held.dropped = True
            self.cancel(held)
