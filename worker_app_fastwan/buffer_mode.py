"""Buffer mode (Vast.ai / local): one slot's loop (docs/protocol.md: "Buffer mode", "Leases", "Shutdown").

Claim a job, report `running`, `JobRunner.generate` it (the GPU's part), then in the background upload it
and deliver its final status through the on-disk outbox. With BUFFER_PIPELINING (the default) the next claim
follows as soon as the MP4 is written, so the GPU waits for neither the upload nor the report; the heartbeat
(`heartbeat.py`) names every held job in `job_ids`, which renews both leases. Backpressure: a slot holds at
most two jobs, one generating and one finished; it claims only while at most one finished job is pending and
no final status is failing to go out (orchestrator down: claiming pauses until the backlog is delivered;
nothing in the outbox is dropped).

A slot whose GPU process fails for good (`JobRunner` unhealthy) goes `out`: it claims nothing more and says
so in its heartbeats, logs and metrics; alone, it ends the worker (exit 1); in a box of slots
(`buffer_main.py`) the others go on. `stop()` (SIGTERM) drains: no more claims, `draining` beats, the
generating job gets DRAIN_TIMEOUT_S (`JobRunner.drain`; then it is stopped and reported failed/timeout,
retryable, as is an upload still going), final statuses get OUTBOX_FLUSH_TIMEOUT_S (the rest stays on disk
for the next start), exit 0. No error in one job ends the loop: an unexpected one is reported as a retryable
`internal` failure.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable

from worker_app_fastwan.claims import claim_next
from worker_app_fastwan.devices import SlotDevice
from worker_app_fastwan.errors import JobFailure
from worker_app_fastwan.exit_codes import ExitCode
from worker_app_fastwan.gpu_child.handle import ChildState
from worker_app_fastwan.heartbeat import Heartbeat
from worker_app_fastwan.held import HeldJob, HeldJobs
from worker_app_fastwan.identity import gpu_class
from worker_app_fastwan.logs import current_slot, job_context, slot_context
from worker_app_fastwan.metrics import Metrics
from worker_app_fastwan.orchestrator_client import (
    HeartbeatFailed,
    OrchestratorClient,
    OrchestratorRejected,
)
from worker_app_fastwan.outbox import Outbox, flush, send_final
from worker_app_fastwan.progress_reports import ProgressThrottle
from worker_app_fastwan.protocol import (
    ClaimedJob,
    ClaimRequest,
    HeartbeatRequest,
    SlotInfo,
    StatusUpdate,
    WorkerState,
)
from worker_app_fastwan.runner import Generated, JobRunner
from worker_app_fastwan.schema import ErrorCode
from worker_app_fastwan.settings import Settings
from worker_app_fastwan.stopping import Stopping

log = logging.getLogger(__name__)


class BufferWorker:
    """One slot: its runner (one GPU process), claim loop and heartbeat. `run()` runs it as the whole worker
    (signals, client); a box of slots calls `run_slot()` and owns those."""

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
        slot: SlotDevice | None = None,
    ) -> None:
        self.settings, self.runner, self.client, self.outbox = settings, runner, client, outbox
        self.worker_id = worker_id
        self.slot = slot or SlotDevice(0, None)
        # Burst runs (tests, the demo, batches), like arq's burst mode: stop after N jobs, or once idle.
        self.max_jobs = settings.BUFFER_MAX_JOBS if max_jobs is None else max_jobs
        self.exit_when_idle = settings.BUFFER_EXIT_WHEN_IDLE if exit_when_idle is None else exit_when_idle
        self.reporter = ProgressThrottle(client, worker_id, min_interval_s=settings.PROGRESS_MIN_INTERVAL_S)
        self.held = HeldJobs()
        runner.listeners += [self.reporter.report_progress, self.held.on_progress]
        self.heartbeat = Heartbeat(settings.HEARTBEAT_INTERVAL_S, self._beat)
        self.jobs_claimed = self.jobs_done = 0
        self.accepting = False  # model warm and the outbox flushed: claims may start
        self.out_reason: str | None = None  # why the slot went out (its GPU process failed for good)
        self.went_out = asyncio.Event()
        self.stopping = Stopping()
        self.drain_deadline = asyncio.Event()  # DRAIN_TIMEOUT_S after stop(): an upload still going is abandoned
        self.flushing: asyncio.Future[int] | None = None  # a box's one delivery of the outbox left from before
        self._alone = True  # the whole worker: going out ends it
        self._finishing: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()  # a held job was reported, or its report started failing
        self._log_slot: int | None = None
        self._work: asyncio.Task[int] | None = None
        self._drain: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ what the box and the metrics read

    @property
    def index(self) -> int:
        return self.slot.index

    @property
    def metrics(self) -> Metrics:
        return self.runner.metrics

    @property
    def jobs_held(self) -> int:
        return len(self.held)

    @property
    def slot_state(self) -> str:
        return "out" if self.out_reason else self._state()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """The whole worker, one slot: work until a signal (drain, exit 0), a burst limit (0) or an unusable
        GPU (1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            return await self.run_slot()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.client.aclose()

    async def run_slot(self, *, alone: bool = True) -> int:
        """This slot, until stop(), a burst limit, or (`alone`) going out; in a box (`alone=False`) an out slot
        keeps beating until stop()."""
        self._alone = alone
        self._log_slot = current_slot()
        self.heartbeat.start()
        self._work = asyncio.create_task(self._main(), name=f"work-{self.index}")
        log.info(
            "buffer worker starting",
            extra={"worker_id": self.worker_id, "orchestrator": self.client.shown_url, "device": self.slot.label},
        )
        try:
            return await self._work
        except asyncio.CancelledError:  # cut short on purpose (and logged) by a deadline or a second signal
            return ExitCode.OK
        finally:
            await self._close()

    async def _close(self) -> None:
        self.stopping.set()  # no more claims; the beats sent while the GPU process stops say `draining`
        if self._drain is not None:
            self._drain.cancel()
        for task in self._finishing:  # only left when the work was cut short
            task.cancel()
        await self.runner.close()
        await self.reporter.aclose()
        await self.heartbeat.aclose()
        left = len(await asyncio.to_thread(self.outbox.pending))
        log.info("buffer worker stopped", extra={"jobs_done": self.jobs_done, "outbox_left": left})

    async def _main(self) -> int:
        # Stored statuses go out while the model loads: their jobs' leases are running out meanwhile.
        flushing = self.flushing or asyncio.ensure_future(flush(self.outbox, self.client))
        await self.stopping.unless(self.runner.start())
        if self.runner.state is not ChildState.ready and not self.stopping.is_set():
            self._mark_out(self.runner.unhealthy_reason or "the GPU process could not start")
            await self._deliver(asyncio.shield(flushing))  # bounded: going out alone stops the worker
            return await self._stay_out()
        await self._deliver(asyncio.shield(flushing))  # nothing is claimed before earlier results are delivered
        self.accepting = True
        if not self.stopping.is_set():
            caps = self.runner.capabilities()
            log.info("claiming jobs", extra={"gpu_class": self.gpu_class, "modes": caps.modes})
        code = await self._claim_loop()
        await asyncio.gather(*self._finishing)  # each is bounded in a drain (drain_deadline, _deliver)
        return code

    def _mark_out(self, reason: str) -> None:
        self.out_reason = reason
        log.error("slot out", extra={"reason": reason, "worker_id": self.worker_id, "device": self.slot.label})
        self.went_out.set()
        if self._alone:
            self.stopping.set()  # the whole worker: nothing is left to do (exit 1)

    async def _stay_out(self) -> int:
        """An out slot finishes what it holds, then beats `out` until the box stops it."""
        await asyncio.gather(*self._finishing)
        await self.stopping.wait()
        return ExitCode.FAILED

    def stop(self) -> None:
        """What SIGTERM/SIGINT do: the first drains, a second stops now."""
        with slot_context(self._log_slot):  # a signal handler runs outside the slot's tasks
            self._stop()

    def _stop(self) -> None:
        if self.stopping.is_set() and self._drain is not None:
            log.warning("second signal: stopping now")
            if self._work is not None:
                self._work.cancel()
            return
        self.stopping.set()
        self._changed.set()
        log.info("draining", extra={"drain_timeout_s": self.settings.DRAIN_TIMEOUT_S, "job_ids": self.held.ids()})
        self.heartbeat.beat_now()  # the orchestrator hears of the drain now, not at the next tick
        self._drain = asyncio.get_running_loop().create_task(self._drain_runner())

    async def _drain_runner(self) -> None:
        # The loop itself stops claiming and bounds the deliveries (`_deliver`); uploads end at the deadline.
        asyncio.get_running_loop().call_later(self.settings.DRAIN_TIMEOUT_S, self.drain_deadline.set)
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

    # ------------------------------------------------------------ claiming

    async def _claim_loop(self) -> int:
        while not (self.stopping.is_set() or (self.max_jobs and self.jobs_claimed >= self.max_jobs)):
            ready = await self.stopping.unless(self.runner.wait_ready())
            if ready is False:
                self._mark_out(self.runner.unhealthy_reason or "the GPU process failed")
                return await self._stay_out()
            if not await self._room_to_claim():
                continue
            # A claim cut short (a signal, a report that started failing) may already have been granted:
            # that job's lease runs out and the orchestrator hands it out again.
            job = await self.stopping.unless(self._claim_unless_stalled())
            if job is not None:
                await self._start(job)
            elif self.held.stalled():
                continue
            elif self.exit_when_idle and not self.stopping.is_set():
                log.info("nothing queued; exiting (BUFFER_EXIT_WHEN_IDLE)")
                break
            else:
                await self.stopping.unless(asyncio.sleep(self.settings.CLAIM_POLL_S))
        return ExitCode.OK

    async def _room_to_claim(self) -> bool:
        """Wait until this slot may take one more job; False if it is stopping meanwhile."""
        limit = 1 if self.settings.BUFFER_PIPELINING else 0
        paused = False
        while not self.stopping.is_set():
            if len(self._finishing) <= limit and not self.held.stalled():
                if paused:
                    log.info("claiming resumed")
                return True
            if self.held.stalled() and not paused:
                paused = True
                log.warning("claiming paused: a final status is not going out", extra={"job_ids": self.held.ids()})
            self._changed.clear()
            await self.stopping.unless(self._changed.wait())
        return False

    async def _claim_unless_stalled(self) -> ClaimedJob | None:
        """The next job (None: nothing queued), or None at once if a final status starts failing meanwhile."""
        claim = asyncio.ensure_future(self._claim())
        try:
            while not claim.done() and not self.held.stalled():
                self._changed.clear()
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait({claim, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
        finally:
            if not claim.done():
                claim.cancel()
        return claim.result() if claim.done() and not claim.cancelled() else None

    async def _claim(self) -> ClaimedJob | None:
        caps, poll_s, max_s = self.runner.capabilities(), self.settings.CLAIM_POLL_S, self.settings.RETRY_MAX_S
        request = ClaimRequest(worker_id=self.worker_id, gpu_class=self.gpu_class, capabilities=caps)
        return await claim_next(self.client, request, poll_s=poll_s, max_s=max_s)

    # ------------------------------------------------------------ one job: the GPU's part here, the rest behind

    async def _start(self, claimed: ClaimedJob) -> None:
        held = self.held.add(claimed)
        self.jobs_claimed += 1
        with job_context(held.job_id):
            log.info("job claimed", extra={"attempt": claimed.attempt, "lease_seconds": claimed.lease_seconds})
            if claimed.lease_seconds <= self.settings.HEARTBEAT_INTERVAL_S:
                log.warning("lease shorter than the heartbeat interval; the job may be handed out again")
            held.running = asyncio.create_task(self._report_running(held))
            outcome = await self._generate(held)
            held.generated = True
            task = asyncio.create_task(self._finish(held, outcome), name=f"finish-{held.job_id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _generate(self, held: HeldJob) -> Generated | StatusUpdate:
        """The GPU's part: the video, or the job's failed status."""
        if held.cancel_requested or held.dropped:
            return self._failed(held, JobFailure(ErrorCode.cancelled, "cancelled before it started"))
        try:
            return await self.runner.generate(held.job_id, held.claimed.input, queued_s=0.0)
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
            self.jobs_done += 1
            self._changed.set()

    def _stalled(self, held: HeldJob) -> None:
        """A final status's delivery failed and is retried: no claims until it went out."""
        held.mark_stalled()
        self._changed.set()

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
            self._cancel(held)

    def _cancel(self, held: HeldJob) -> None:
        """Stop the job where it is: at the GPU process's next safe point, or its upload now."""
        self.runner.cancel(held.job_id)
        if held.upload is not None:
            held.upload.cancel()

    # ------------------------------------------------------------ what a heartbeat says

    async def _beat(self) -> None:
        try:
            answer = await self.client.heartbeat(self.worker_id, self._heartbeat_body())
        except HeartbeatFailed as exc:
            log.warning("heartbeat failed", extra={"error": str(exc)})
            return
        for job_id in answer.cancel_job_ids:  # cancel requested, or the lease is lost
            held = self.held.request_cancel(job_id)
            if held is not None:
                self._cancel(held)

    def _heartbeat_body(self) -> HeartbeatRequest:
        shown = self.held.generating() or self.held.first()  # `job_id` is the one generating
        state = self._state()
        return HeartbeatRequest(
            gpu_class=self.gpu_class,
            state=state,
            job_id=shown.job_id if shown else None,
            job_ids=self.held.ids(),  # v1.1: every job held, generating, uploading or reporting
            stage=shown.stage if shown else None,
            progress=shown.progress if shown else 0.0,
            gpu=self.runner.gpu_info(),
            slot=SlotInfo(
                index=self.index,
                device=self.slot.label,
                state="out" if self.out_reason else state,
                reason=self.out_reason,
            ),
        )

    def _state(self) -> WorkerState:
        if self.stopping.is_set() or self.out_reason:
            return "draining"
        if self.held:
            return "busy"
        return "idle" if self.accepting and self.runner.state is ChildState.ready else "starting"

    @property
    def gpu_class(self) -> str:
        return gpu_class(self.settings, self.runner.device)
