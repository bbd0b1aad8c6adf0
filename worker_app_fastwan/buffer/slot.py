"""Buffer mode (Vast.ai / local): one slot's loop (docs/protocol.md: "Buffer mode", "Leases", "Shutdown").

Claim a job and hand it to `JobLifecycle` (`lifecycle.py`): it generates the job (the GPU's part), then
uploads it and delivers its final status in the background. With BUFFER_PIPELINING (the default) the next
claim follows as soon as the MP4 is written, so the GPU waits for neither the upload nor the report; the
heartbeat (`heartbeat.py`) names every held job in `job_ids`, which renews both leases. Backpressure: a slot
holds at most two jobs, one generating and one finished; it claims only while at most one finished job is
pending and no final status is failing to go out (orchestrator down: claiming pauses until the backlog is
delivered; nothing in the outbox is dropped).

A slot whose GPU process fails for good (`JobRunner` unhealthy) goes `out`: it claims nothing more and says
so in its heartbeats, logs and metrics; alone, it ends the worker (exit 1); in a box of slots
(`box.py`) the others go on. `stop()` (SIGTERM) drains: no more claims, `draining` beats, the
generating job gets DRAIN_TIMEOUT_S (`JobRunner.drain`; then it is stopped and reported failed/timeout,
retryable, as is an upload still going), final statuses get OUTBOX_FLUSH_TIMEOUT_S (the rest stays on disk
for the next start), exit 0. No error in one job ends the loop: an unexpected one is reported as a retryable
`internal` failure.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from worker_app_fastwan.buffer.claims import claim_next
from worker_app_fastwan.buffer.heartbeat import Heartbeat, heartbeat_body
from worker_app_fastwan.buffer.held import HeldJobs
from worker_app_fastwan.buffer.identity import gpu_class
from worker_app_fastwan.buffer.lifecycle import JobLifecycle
from worker_app_fastwan.buffer.outbox import Outbox, flush
from worker_app_fastwan.core.clock import SYSTEM_CLOCK, Clock
from worker_app_fastwan.core.devices import SlotDevice
from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.core.logs import current_slot, job_context, slot_context
from worker_app_fastwan.core.metrics import Metrics
from worker_app_fastwan.core.protocol import (
    ClaimedJob,
    ClaimRequest,
    WorkerState,
)
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.core.stopping import Stopping
from worker_app_fastwan.job.runner import RunnerFactory
from worker_app_fastwan.orchestrator.client import (
    HeartbeatFailed,
    OrchestratorClient,
)
from worker_app_fastwan.orchestrator.progress import ProgressThrottle

log = logging.getLogger(__name__)
# After a claim the orchestrator held open (v1.3), the next follows at once, but never sooner than this: an
# orchestrator that says it waited and answers at once must not turn the loop into a flood.
MIN_CLAIM_INTERVAL_S = 0.05


class Slot:
    """One slot: its runner (one GPU process), claim loop and heartbeat. `run()` runs it as the whole worker
    (signals, client); a box of slots calls `run_slot()` and owns those."""

    def __init__(
        self,
        settings: Settings,
        make_runner: RunnerFactory,
        client: OrchestratorClient,
        outbox: Outbox,
        worker_id: str,
        *,
        device: SlotDevice | None = None,
        max_jobs: int | None = None,
        exit_when_idle: bool | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings, self.client, self.outbox = settings, client, outbox
        self.worker_id = worker_id
        self.device = device or SlotDevice(0, None)
        self._clock = clock
        # Burst runs (tests, the demo, batches), like arq's burst mode: stop after N jobs, or once idle.
        self.max_jobs = settings.BUFFER_MAX_JOBS if max_jobs is None else max_jobs
        self.exit_when_idle = settings.BUFFER_EXIT_WHEN_IDLE if exit_when_idle is None else exit_when_idle
        interval_s = settings.PROGRESS_MIN_INTERVAL_S
        self.reporter = ProgressThrottle(client, worker_id, min_interval_s=interval_s, clock=clock)
        self.held = HeldJobs()
        self.runner = make_runner(listeners=[self.reporter.report_progress, self.held.on_progress])
        self.heartbeat = Heartbeat(settings.HEARTBEAT_INTERVAL_S, self._beat, clock=clock)
        self.jobs_claimed = 0
        self._claim_waited = False  # the last empty claim was held open by the orchestrator (v1.3 long poll)
        self._claim_note: str | None = None  # why the orchestrator gives no jobs (a quarantine), last said
        self.accepting = False  # model warm and the outbox flushed: claims may start
        self.out_reason: str | None = None  # why the slot went out (its GPU process failed for good)
        self._went_out = asyncio.Event()
        self._stopping = Stopping()
        self._alone = True  # the whole worker: going out ends it
        flush_grace_s = settings.OUTBOX_FLUSH_TIMEOUT_S
        self.jobs = JobLifecycle(
            self.runner, client, outbox, worker_id, self.held, self._stopping, flush_grace_s=flush_grace_s, clock=clock
        )
        self._log_slot: int | None = None
        self._work: asyncio.Task[int] | None = None
        self._drain: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ what the box and the metrics read

    @property
    def index(self) -> int:
        return self.device.index

    @property
    def is_stopping(self) -> bool:
        """Draining (a signal, a burst's end) or stopped: a second `stop()` would be the stop-now."""
        return self._stopping.is_set()

    async def wait_out(self) -> None:
        """Return once the slot has gone out (its GPU process failed for good)."""
        await self._went_out.wait()

    @property
    def metrics(self) -> Metrics:
        return self.runner.metrics

    @property
    def jobs_done(self) -> int:
        return self.jobs.done

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

    async def run_slot(self, *, alone: bool = True, flushing: asyncio.Future[int] | None = None) -> int:
        """This slot, until stop(), a burst limit, or (`alone`) going out; in a box (`alone=False`) an out slot
        keeps beating until stop(). `flushing`: the box's one delivery of the outbox left from before (a slot
        alone delivers it itself)."""
        self._alone = alone
        self._log_slot = current_slot()
        self.heartbeat.start()
        self._work = asyncio.create_task(self._main(flushing), name=f"work-{self.index}")
        log.info(
            "buffer worker starting",
            extra={"worker_id": self.worker_id, "orchestrator": self.client.shown_url, "device": self.device.label},
        )
        try:
            return await self._work
        except asyncio.CancelledError:  # cut short on purpose (and logged) by a deadline or a second signal
            return ExitCode.OK
        finally:
            await self._close()

    async def _close(self) -> None:
        self._stopping.set()  # no more claims; the beats sent while the GPU process stops say `draining`
        if self._drain is not None:
            self._drain.cancel()
        self.jobs.abandon()  # jobs are only left finishing when the work was cut short
        await self.runner.close()
        await self.reporter.aclose()
        await self.heartbeat.aclose()
        left = len(await asyncio.to_thread(self.outbox.pending))
        log.info("buffer worker stopped", extra={"jobs_done": self.jobs_done, "outbox_left": left})

    async def _main(self, flushing: asyncio.Future[int] | None) -> int:
        # Stored statuses go out while the model loads: their jobs' leases are running out meanwhile.
        flushing = flushing or asyncio.ensure_future(flush(self.outbox, self.client))
        await self._stopping.unless(self.runner.start())
        if not self.runner.ready and not self._stopping.is_set():
            self._mark_out(self.runner.unhealthy_reason or "the GPU process could not start")
            await self.jobs.deliver(asyncio.shield(flushing))  # bounded: going out alone stops the worker
            return await self._stay_out()
        await self.jobs.deliver(asyncio.shield(flushing))  # nothing is claimed before earlier results are delivered
        self.accepting = True
        if not self._stopping.is_set():
            caps = self.runner.capabilities()
            log.info("claiming jobs", extra={"gpu_class": self.gpu_class, "modes": caps.modes})
        code = await self._claim_loop()
        await self.jobs.finished()  # each is bounded in a drain (the drain deadline, `deliver`)
        return code

    def _mark_out(self, reason: str) -> None:
        self.out_reason = reason
        log.error("slot out", extra={"reason": reason, "worker_id": self.worker_id, "device": self.device.label})
        self._went_out.set()
        if self._alone:
            self._stopping.set()  # the whole worker: nothing is left to do (exit 1)

    async def _stay_out(self) -> int:
        """An out slot finishes what it holds, then beats `out` until the box stops it."""
        await self.jobs.finished()
        await self._stopping.wait()
        return ExitCode.FAILED

    def stop(self) -> None:
        """What SIGTERM/SIGINT do: the first drains, a second stops now."""
        with slot_context(self._log_slot):  # a signal handler runs outside the slot's tasks
            self._stop()

    def _stop(self) -> None:
        if self._stopping.is_set() and self._drain is not None:
            log.warning("second signal: stopping now")
            if self._work is not None:
                self._work.cancel()
            return
        self._stopping.set()
        self.jobs.wake()
        log.info("draining", extra={"drain_timeout_s": self.settings.DRAIN_TIMEOUT_S, "job_ids": self.held.ids()})
        self.heartbeat.beat_now()  # the orchestrator hears of the drain now, not at the next tick
        self._drain = asyncio.get_running_loop().create_task(self._drain_runner())

    async def _drain_runner(self) -> None:
        # The loop itself stops claiming and bounds the deliveries (`jobs.deliver`); uploads end at the deadline.
        self.jobs.start_drain_deadline(self.settings.DRAIN_TIMEOUT_S)
        if not await self.runner.drain(self.settings.DRAIN_TIMEOUT_S):
            log.error("the job did not stop; exiting without it (its lease runs out)")
            if self._work is not None:
                self._work.cancel()

    # ------------------------------------------------------------ claiming

    async def _claim_loop(self) -> int:
        while not (self._stopping.is_set() or (self.max_jobs and self.jobs_claimed >= self.max_jobs)):
            ready = await self._stopping.unless(self.runner.wait_ready())
            if ready is False:
                self._mark_out(self.runner.unhealthy_reason or "the GPU process failed")
                return await self._stay_out()
            if not await self.jobs.room(1 if self.settings.BUFFER_PIPELINING else 0):
                continue
            # A claim cut short (a signal, a report that started failing) may already have been granted:
            # that job's lease runs out and the orchestrator hands it out again (one that waited for a job sees
            # the hang-up and puts the job back at once).
            self._claim_waited = False
            started = self._clock.now()
            job = await self._stopping.unless(self.jobs.unless_stalled(self._claim()))
            if job is not None:
                await self._start(job)
            elif self.held.stalled():
                continue
            elif self.exit_when_idle and not self._stopping.is_set():
                log.info("nothing queued; exiting (BUFFER_EXIT_WHEN_IDLE)")
                break
            elif self._claim_waited:  # the orchestrator already waited for a job (v1.3): ask again at once
                await self._stopping.unless(self._clock.sleep(MIN_CLAIM_INTERVAL_S - (self._clock.now() - started)))
            else:  # an orchestrator that answers at once (v1.2, or one that waits no more): poll
                await self._stopping.unless(self._clock.sleep(self.settings.CLAIM_POLL_S))
        return ExitCode.OK

    async def _claim(self) -> ClaimedJob | None:
        caps, poll_s, max_s = self.runner.capabilities(), self.settings.CLAIM_POLL_S, self.settings.RETRY_MAX_S
        # A burst run that exits when idle must hear "nothing" at once; otherwise the claim may wait for a job.
        wait_s = 0.0 if self.exit_when_idle else self.settings.CLAIM_WAIT_S
        request = ClaimRequest(
            worker_id=self.worker_id,
            gpu_class=self.gpu_class,
            capabilities=caps,
            wants_attempt_secret=True,
            wait_s=wait_s,
        )
        reply = await claim_next(self.client, request, poll_s=poll_s, max_s=max_s, clock=self._clock)
        self._claim_waited = reply.waited
        if reply.note != self._claim_note:  # a quarantine (or its end): said once, not at every claim
            if reply.note:
                log.warning("the orchestrator gives this worker no jobs", extra={"reason": reply.note})
            elif reply.job is not None:
                log.info("the orchestrator gives this worker jobs again")
            self._claim_note = reply.note if reply.job is None else None
        return reply.job

    # ------------------------------------------------------------ one job: the GPU's part here, the rest behind

    async def _start(self, claimed: ClaimedJob) -> None:
        held = self.held.add(claimed)
        self.jobs_claimed += 1
        with job_context(held.job_id):  # its finishing task, started inside, keeps the job's log context
            log.info("job claimed", extra={"attempt": claimed.attempt, "lease_seconds": claimed.lease_seconds})
            if claimed.lease_seconds <= self.settings.HEARTBEAT_INTERVAL_S:
                log.warning("lease shorter than the heartbeat interval; the job may be handed out again")
            await self.jobs.run(held)

    # ------------------------------------------------------------ what a heartbeat says

    async def _beat(self) -> None:
        try:
            gpu, out = self.runner.gpu_info(), self.out_reason
            body = heartbeat_body(self.held, self._state(), self.gpu_class, gpu=gpu, slot=self.device, out_reason=out)
            answer = await self.client.heartbeat(self.worker_id, body)
        except HeartbeatFailed as exc:
            log.warning("heartbeat failed", extra={"error": str(exc)})
            return
        for job_id in answer.cancel_job_ids:  # cancel requested, or the lease is lost
            held = self.held.request_cancel(job_id)
            if held is not None:
                self.jobs.cancel(held)

    def _state(self) -> WorkerState:
        if self._stopping.is_set() or self.out_reason:
            return "draining"
        if self.held:
            return "busy"
        return "idle" if self.accepting and self.runner.ready else "starting"

    @property
    def gpu_class(self) -> str:
        return gpu_class(self.settings, self.runner.device)
