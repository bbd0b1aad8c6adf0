"""Buffer mode (Vast.ai / local): claim a job, report `running`, `JobRunner.run` it, deliver its final status
through the on-disk outbox, claim again (docs/protocol.md: "Buffer mode", "Leases", "Shutdown").

The heartbeat (`heartbeat.py`) beats beside the loop from start to exit. On SIGTERM/SIGINT the worker stops
claiming, beats `draining`, drains the runner (`JobRunner.drain`: past DRAIN_TIMEOUT_S the job is stopped and
reported failed/timeout, retryable), gives final statuses OUTBOX_FLUSH_TIMEOUT_S to go out (the rest stays on
disk for the next start) and exits 0. No error in one job ends the loop: an unexpected one is reported as a
retryable `internal` failure, and a final status the outbox cannot store is delivered directly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable

from worker_app_fastwan.claims import claim_next
from worker_app_fastwan.errors import JobFailure
from worker_app_fastwan.exit_codes import ExitCode
from worker_app_fastwan.gpu_child.handle import ChildState
from worker_app_fastwan.heartbeat import Heartbeat
from worker_app_fastwan.held import HeldJob, HeldJobs
from worker_app_fastwan.identity import gpu_class
from worker_app_fastwan.logs import job_context
from worker_app_fastwan.orchestrator_client import (
    HeartbeatFailed,
    OrchestratorClient,
    OrchestratorRejected,
)
from worker_app_fastwan.outbox import Outbox, flush, send_final
from worker_app_fastwan.progress_reports import ProgressThrottle
from worker_app_fastwan.protocol import ClaimedJob, ClaimRequest, HeartbeatRequest, StatusUpdate, WorkerState
from worker_app_fastwan.runner import JobRunner
from worker_app_fastwan.schema import ErrorCode
from worker_app_fastwan.settings import Settings
from worker_app_fastwan.stopping import Stopping

log = logging.getLogger(__name__)


class BufferWorker:
    def __init__(
        self,
        settings: Settings,
        runner: JobRunner,
        client: OrchestratorClient,
        outbox: Outbox,
        worker_id: str,
        *,
        max_jobs: int | None = None,
        exit_when_idle: bool | None = None,
    ) -> None:
        self.settings, self.runner, self.client, self.outbox = settings, runner, client, outbox
        self.worker_id = worker_id
        # Burst runs (tests, the demo, batches), like arq's burst mode: stop after N jobs, or once idle.
        self.max_jobs = settings.BUFFER_MAX_JOBS if max_jobs is None else max_jobs
        self.exit_when_idle = settings.BUFFER_EXIT_WHEN_IDLE if exit_when_idle is None else exit_when_idle
        self.reporter = ProgressThrottle(client, worker_id, min_interval_s=settings.PROGRESS_MIN_INTERVAL_S)
        self.held = HeldJobs()
        runner.listeners += [self.reporter.report_progress, self.held.on_progress]
        self.heartbeat = Heartbeat(settings.HEARTBEAT_INTERVAL_S, self._beat)
        self.jobs_done = 0
        self.accepting = False  # model warm and the outbox flushed: claims may start
        self.stopping = Stopping()
        self._work: asyncio.Task[int] | None = None
        self._drain: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Work until a signal (drain, exit 0), a burst limit (0) or an unusable GPU (1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.heartbeat.start()
        self._work = asyncio.create_task(self._main(), name="work")
        log.info("buffer worker starting", extra={"worker_id": self.worker_id, "orchestrator": self.client.shown_url})
        try:
            return await self._work
        except asyncio.CancelledError:  # cut short on purpose (and logged) by a deadline or a second signal
            return ExitCode.OK
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._close()

    async def _close(self) -> None:
        self.stopping.set()  # no more claims; the beats sent while the GPU process stops say `draining`
        if self._drain is not None:
            self._drain.cancel()
        await self.runner.close()
        await self.reporter.aclose()
        await self.heartbeat.aclose()
        await self.client.aclose()
        left = len(await asyncio.to_thread(self.outbox.pending))
        log.info("buffer worker stopped", extra={"jobs_done": self.jobs_done, "outbox_left": left})

    async def _main(self) -> int:
        # Stored statuses go out while the model loads: their jobs' leases are running out meanwhile.
        flushing = asyncio.create_task(flush(self.outbox, self.client), name="outbox-flush")
        await self.stopping.unless(self.runner.start())
        if self.runner.state is not ChildState.ready and not self.stopping.is_set():
            log.error("the GPU process could not start; exiting", extra={"reason": self.runner.unhealthy_reason})
            self.stopping.set()  # what the flush has left gets the same bounded time as in a drain
            await self._deliver(flushing)
            return ExitCode.FAILED
        await self._deliver(flushing)  # nothing is claimed before earlier results are delivered
        self.accepting = True
        if not self.stopping.is_set():
            caps = self.runner.capabilities()
            log.info("claiming jobs", extra={"gpu_class": self.gpu_class, "modes": caps.modes})
        return await self._claim_loop()

    def stop(self) -> None:
        """What SIGTERM/SIGINT do: the first drains, a second stops now."""
        if self.stopping.is_set():
            log.warning("second signal: stopping now")
            if self._work is not None:
                self._work.cancel()
            return
        self.stopping.set()
        log.info("draining", extra={"drain_timeout_s": self.settings.DRAIN_TIMEOUT_S, "job_ids": self.held.ids()})
        self.heartbeat.beat_now()  # the orchestrator hears of the drain now, not at the next tick
        self._drain = asyncio.get_running_loop().create_task(self._drain_runner())

    async def _drain_runner(self) -> None:
        # The loop itself stops claiming and bounds the deliveries (`_deliver`).
        if not await self.runner.drain(self.settings.DRAIN_TIMEOUT_S):
            log.error("the job did not stop; exiting without it (its lease runs out)")
            if self._work is not None:
                self._work.cancel()

    async def _deliver(self, aw: Awaitable[object]) -> None:
        """Outbox deliveries go on until done, except in a drain: then OUTBOX_FLUSH_TIMEOUT_S at most."""
        try:
            done = await self.stopping.unless(aw, grace_s=self.settings.OUTBOX_FLUSH_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a delivery bug must not end the worker; the job's lease runs out
            log.exception("delivering final statuses failed unexpectedly")
            return
        if done is None:
            log.warning(
                "final statuses not delivered in time; they stay in the outbox for the next start",
                extra={"outbox": str(self.outbox.folder)},
            )

    # ------------------------------------------------------------ the claim-and-run loop

    async def _claim_loop(self) -> int:
        while not (self.stopping.is_set() or (self.max_jobs and self.jobs_done >= self.max_jobs)):
            if await self.stopping.unless(self.runner.wait_ready()) is False:
                log.error("worker unhealthy; exiting", extra={"reason": self.runner.unhealthy_reason})
                return ExitCode.FAILED
            # A claim cut short by a signal may already have been granted: that job's lease runs out.
            job = await self.stopping.unless(self._claim())
            if job is not None:
                await self._handle(job)
            elif self.exit_when_idle and not self.stopping.is_set():
                log.info("nothing queued; exiting (BUFFER_EXIT_WHEN_IDLE)")
                break
            else:
                await self.stopping.unless(asyncio.sleep(self.settings.CLAIM_POLL_S))
        return ExitCode.OK

    async def _claim(self) -> ClaimedJob | None:
        caps, poll_s, max_s = self.runner.capabilities(), self.settings.CLAIM_POLL_S, self.settings.RETRY_MAX_S
        request = ClaimRequest(worker_id=self.worker_id, gpu_class=self.gpu_class, capabilities=caps)
        return await claim_next(self.client, request, poll_s=poll_s, max_s=max_s)

    async def _handle(self, claimed: ClaimedJob) -> None:
        held = self.held.add(claimed)
        try:
            with job_context(held.job_id):
                log.info("job claimed", extra={"attempt": claimed.attempt, "lease_seconds": claimed.lease_seconds})
                if claimed.lease_seconds <= self.settings.HEARTBEAT_INTERVAL_S:
                    log.warning("lease shorter than the heartbeat interval; the job may be handed out again")
                running = asyncio.create_task(self._report_running(held))
                try:
                    update = await self._execute(held)
                finally:
                    running.cancel()
                if held.dropped:
                    log.warning("job dropped: the orchestrator says it is no longer ours")
                else:
                    await self._deliver(send_final(self.outbox, self.client, held.job_id, update))
        finally:
            self.held.remove(claimed.job_id)
            self.jobs_done += 1

    async def _report_running(self, held: HeldJob) -> None:
        # Not outboxed, and in the background: the job need not wait for a slow orchestrator.
        running = StatusUpdate(worker_id=self.worker_id, status="running", attempt=held.claimed.attempt)
        try:
            outcome = await self.client.post_status(held.job_id, running)
        except (OrchestratorRejected, ValueError) as exc:
            log.warning("running status refused", extra={"error": str(exc)})
            return
        if outcome == "gone":
            held.dropped = True
            self.runner.cancel(held.job_id)

    async def _execute(self, held: HeldJob) -> StatusUpdate:
        """Run the job; its final status (completed with the result, or failed with the error)."""
        attempt = held.claimed.attempt
        if held.cancel_requested or held.dropped:
            failure = JobFailure(ErrorCode.cancelled, "cancelled before it started")
        else:
            try:
                result = await self.runner.run(held.job_id, held.claimed.input, queued_s=0.0)
                return StatusUpdate(worker_id=self.worker_id, status="completed", result=result, attempt=attempt)
            except JobFailure as exc:
                failure = exc
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the job is reported, and retried
                log.exception("job failed unexpectedly")
                failure = JobFailure(ErrorCode.internal, f"the worker failed to run the job: {type(exc).__name__}")
        return StatusUpdate(worker_id=self.worker_id, status="failed", error=failure.to_error(), attempt=attempt)

    async def _beat(self) -> None:
        """One heartbeat (see heartbeat.py for when); its answer may cancel jobs."""
        try:
            answer = await self.client.heartbeat(self.worker_id, self._heartbeat_body())
        except HeartbeatFailed as exc:
            log.warning("heartbeat failed", extra={"error": str(exc)})
            return
        for job_id in answer.cancel_job_ids:  # cancel requested, or the lease is lost
            if self.held.request_cancel(job_id):
                self.runner.cancel(job_id)

    def _heartbeat_body(self) -> HeartbeatRequest:
        held = self.held.first()
        return HeartbeatRequest(
            gpu_class=self.gpu_class,
            state=self._state(),
            job_id=held.job_id if held else None,
            job_ids=self.held.ids(),  # v1.1: every job held, generating or still reporting
            stage=held.stage if held else None,
            progress=held.progress if held else 0.0,
            gpu=self.runner.gpu_info(),
        )

    def _state(self) -> WorkerState:
        if self.stopping.is_set():
            return "draining"
        if self.held:
            return "busy"
        return "idle" if self.accepting and self.runner.state is ChildState.ready else "starting"

    @property
    def gpu_class(self) -> str:
        return gpu_class(self.settings, self.runner.device)
