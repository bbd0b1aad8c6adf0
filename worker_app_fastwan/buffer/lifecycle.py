"""One held job's life in a buffer slot, after its claim: generate, then finish in the background.

`JobLifecycle.run()` is the GPU's part and returns once the MP4 is written (or the job failed), so the claim
loop (`slot.py`) may claim the next job while this one's upload and final status go on in a
`finishing` task (pipelining). Every path ends in a final status through the on-disk outbox, unless the
orchestrator said the job is no longer ours. A cancel (heartbeat answer, `gone`) stops the job wherever it
is: the GPU process at its next safe point, or the upload now; the drain deadline abandons an upload.
Kept apart from the loop so that the loop reads as claim-and-drain only, and each job's ending is one place:
the slot hands jobs over (`run`, `cancel`) and asks (`room`, `unless_stalled`, `finished`, `deliver`); it
never reaches into the tasks or events kept here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from worker_app_fastwan.buffer.held import HeldJob, HeldJobs
from worker_app_fastwan.buffer.outbox import Outbox, send_final
from worker_app_fastwan.core.clock import SYSTEM_CLOCK, Clock
from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.protocol import ClaimedJob, JobStatus, StatusUpdate
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.core.stopping import Stopping
from worker_app_fastwan.job.result import Generated
from worker_app_fastwan.job.runner import JobRunner
from worker_app_fastwan.orchestrator.client import OrchestratorClient, OrchestratorRejected

log = logging.getLogger(__name__)


class JobLifecycle:
    """The jobs of one slot from claim to final status. It counts the jobs still uploading or reporting (the
    loop's backpressure), bounds the outbox's deliveries once the slot is stopping, and abandons uploads at the
    drain deadline; the slot asks through its methods."""

    def __init__(
        self,
        runner: JobRunner,
        client: OrchestratorClient,
        outbox: Outbox,
        worker_id: str,
        held: HeldJobs,
        stopping: Stopping,
        *,
        flush_grace_s: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.runner, self.client, self.outbox, self.worker_id, self.held = runner, client, outbox, worker_id, held
        self._stopping, self._flush_grace_s, self._clock = stopping, flush_grace_s, clock
        self._drain_deadline = asyncio.Event()  # DRAIN_TIMEOUT_S after stop(): an upload still going is abandoned
        self._deadline_timer: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # a held job was reported, or its report started failing
        self._finishing: set[asyncio.Task[None]] = set()  # jobs uploading or reporting
        self.done = 0

    # ------------------------------------------------------------ what the slot asks

    @property
    def finishing(self) -> int:
        return len(self._finishing)

    async def finished(self) -> None:
        """Wait until every job handed over has its final status out (each is bounded in a drain)."""
        await asyncio.gather(*self._finishing)

    def abandon(self) -> None:
        """The work was cut short (a second signal, a GPU process that would not stop): stop every job now."""
        for task in self._finishing:
            task.cancel()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()

    def wake(self) -> None:
        """Something the claim loop waits on may have changed (the slot is stopping)."""
        self._changed.set()

    def start_drain_deadline(self, timeout_s: float) -> None:
        """Uploads still going `timeout_s` from now are abandoned and reported failed/timeout."""
        if self._deadline_timer is None:
            self._deadline_timer = asyncio.ensure_future(self._deadline(timeout_s))

    async def _deadline(self, timeout_s: float) -> None:
        await self._clock.sleep(timeout_s)
        self._drain_deadline.set()

    async def deliver(self, aw: Awaitable[object]) -> None:
        """Outbox deliveries go on until done, except once the slot is stopping: then OUTBOX_FLUSH_TIMEOUT_S at
        most, and the rest stays on disk for the next start."""
        try:
            done = await self._stopping.unless(aw, grace_s=self._flush_grace_s)
        except Exception:  # noqa: BLE001 - a delivery bug must not end the worker; the job's lease runs out
            log.exception("delivering final statuses failed unexpectedly")
            return
        if done is None:
            log.warning(
                "final statuses not delivered in time; they stay in the outbox for the next start",
                extra={"outbox": str(self.outbox.folder)},
            )

    async def room(self, limit: int) -> bool:
        """Wait until at most `limit` jobs are finishing and no final status is failing to go out (claims
        pause meanwhile: nothing piles up behind an orchestrator that is down); False if stopping first."""
        paused = False
        while not self._stopping.is_set():
            if len(self._finishing) <= limit and not self.held.stalled():
                if paused:
                    log.info("claiming resumed")
                return True
            if self.held.stalled() and not paused:
                paused = True
                log.warning("claiming paused: a final status is not going out", extra={"job_ids": self.held.ids()})
            self._changed.clear()
            await self._stopping.unless(self._changed.wait())
        return False

    async def unless_stalled(self, claim: Awaitable[ClaimedJob | None]) -> ClaimedJob | None:
        """The claim's job (None: nothing queued), or None at once if a final status starts failing meanwhile."""
        claiming = asyncio.ensure_future(claim)
        try:
            while not claiming.done() and not self.held.stalled():
                self._changed.clear()
                changed = asyncio.ensure_future(self._changed.wait())
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
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

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
                await self.deliver(send_final(self.outbox, self.client, held.job_id, update, on_retry))
        finally:
            self.held.remove(held.job_id)
            self.done += 1
            self._changed.set()

    def _stalled(self, held: HeldJob) -> None:
        """A final status's delivery failed and is retried: no claims until it went out."""
        held.mark_stalled()
        self._changed.set()

    async def _upload(self, held: HeldJob, generated: Generated) -> StatusUpdate:
        """Upload beside the next job; a cancel or the drain deadline abandons it."""
        held.upload = upload = asyncio.ensure_future(self.runner.finish(generated))
        deadline = asyncio.ensure_future(self._drain_deadline.wait())
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
        return self._status(held, "completed", result=result)

    def _unexpected(self, exc: Exception) -> JobFailure:
        log.error("job failed unexpectedly", exc_info=exc)
        return JobFailure(ErrorCode.internal, f"the worker failed to run the job: {type(exc).__name__}")

    def _failed(self, held: HeldJob, failure: JobFailure) -> StatusUpdate:
        return self._status(held, "failed", error=failure.to_error())

    def _status(self, held: HeldJob, status: JobStatus, **fields: Any) -> StatusUpdate:
        """A report about the held attempt: its number and (v1.2) the secret its claim came with."""
        secret = held.claimed.attempt_secret
        return StatusUpdate(
            worker_id=self.worker_id, status=status, attempt=held.attempt, attempt_secret=secret, **fields
        )

    async def _report_running(self, held: HeldJob) -> None:
        # Not outboxed, and in the background: the job need not wait for a slow orchestrator.
        running = self._status(held, "running")
        try:
            outcome = await self.client.post_status(held.job_id, running)
        except (OrchestratorRejected, ValueError) as exc:
            log.warning("running status refused", extra={"error": str(exc)})
            return
        if outcome == "gone":
            held.dropped = True
            self.cancel(held)
