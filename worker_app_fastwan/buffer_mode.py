"""Buffer mode (Vast.ai / local): claim jobs from the orchestrator, run them, report them.

Protocol: docs/protocol.md ("Buffer mode", "Leases", "Shutdown"). One job at a time:
claim → `running` → `JobRunner.run` → final status (through the on-disk outbox) → claim again.

Two tasks share the parent's event loop: the heartbeat, on a fixed cadence from start to exit, and the
work loop above. Generation runs in the GPU child process and uploads in a thread, so nothing on the loop
can hold a heartbeat back. On SIGTERM/SIGINT the worker stops claiming, beats `draining`, lets the job
finish (past DRAIN_TIMEOUT_S it is stopped and reported failed/timeout, retryable), gives pending final
statuses OUTBOX_FLUSH_TIMEOUT_S to go out (what is left stays on disk for the next start) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
import signal
import socket
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from worker_app_fastwan.errors import JobFailure
from worker_app_fastwan.exit_codes import ExitCode
from worker_app_fastwan.gpu_child import CANCEL_GRACE_S
from worker_app_fastwan.logs import job_context
from worker_app_fastwan.modes import enabled_modes
from worker_app_fastwan.orchestrator_client import (
    HeartbeatFailed,
    OrchestratorClient,
    OrchestratorRejected,
    ProgressReporter,
)
from worker_app_fastwan.outbox import Outbox, flush, send_final, write_atomic
from worker_app_fastwan.protocol import (
    Capabilities,
    ClaimedJob,
    ClaimRequest,
    GpuInfo,
    HeartbeatRequest,
    StatusUpdate,
    WorkerState,
)
from worker_app_fastwan.runner import Busy, JobProgress, JobRunner, NotReady, RunnerState
from worker_app_fastwan.schema import ID_PATTERN, MAX_FRAMES, MAX_SIDE, ErrorCode, Stage
from worker_app_fastwan.settings import Settings

log = logging.getLogger(__name__)

READY_POLL_S = 0.2
_T = TypeVar("_T")


@dataclass
class HeldJob:
    """The job this worker holds, from its claim until its final status is delivered (or it is dropped)."""

    claimed: ClaimedJob
    stage: Stage | None = None
    progress: float = 0.0
    step: int | None = None
    cancel_requested: bool = False
    dropped: bool = False  # the orchestrator said 409: not ours any more, report nothing

    @property
    def job_id(self) -> str:
        return self.claimed.job_id


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
        self.reporter = ProgressReporter(client, worker_id, min_interval_s=settings.PROGRESS_MIN_INTERVAL_S)
        runner.listeners.append(self._on_progress)
        self.held: HeldJob | None = None
        self.jobs_done = 0
        self.accepting = False  # model warm and the outbox flushed: claims may start
        self.stopping = asyncio.Event()
        self._work: asyncio.Task[int] | None = None
        self._drain: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        self._refusals = 0

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Work until a signal (drain, exit 0), a burst limit (0) or an unusable GPU (1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        heartbeats = asyncio.create_task(self._heartbeats(), name="heartbeats")
        self._work = asyncio.create_task(self._main(), name="work")
        log.info("buffer worker starting", extra={"worker_id": self.worker_id, "orchestrator": self.client.shown_url})
        try:
            return await self._work
        except asyncio.CancelledError:  # cut short on purpose (and logged) by a deadline or a second signal
            return ExitCode.OK
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._close(heartbeats)

    async def _close(self, heartbeats: asyncio.Task[None]) -> None:
        self.stopping.set()  # no more claims; the beats sent while the GPU process stops say `draining`
        if self._drain is not None:
            self._drain.cancel()
        await self.runner.close()
        await self.reporter.aclose()
        for task in (heartbeats, self._beat):  # the heartbeat lasts from start to exit
            if task is not None:
                task.cancel()
        await self.client.aclose()
        left = len(await asyncio.to_thread(self.outbox.pending))
        log.info("buffer worker stopped", extra={"jobs_done": self.jobs_done, "outbox_left": left})

    async def _main(self) -> int:
        # Stored statuses go out while the model loads: their jobs' leases are running out meanwhile.
        flushing = asyncio.create_task(flush(self.outbox, self.client), name="outbox-flush")
        await self._unless_stopping(self.runner.start())
        if self.runner.state is not RunnerState.ready and not self.stopping.is_set():
            log.error("the GPU process could not start; exiting", extra={"reason": self.runner.unhealthy_reason})
            self.stopping.set()  # what the flush has left gets the same bounded time as in a drain
            await self._deliver(flushing)
            return ExitCode.FAILED
        await self._deliver(flushing)  # nothing is claimed before earlier results are delivered
        self.accepting = True
        if not self.stopping.is_set():
            log.info("claiming jobs", extra={"gpu_class": self.gpu_class, "modes": self._capabilities().modes})
        return await self._claim_loop()

    # ------------------------------------------------------------ signals and drain

    def _on_signal(self) -> None:
        if self.stopping.is_set():
            log.warning("second signal: stopping now")
            if self._work is not None:
                self._work.cancel()
            return
        self.stopping.set()
        log.info(
            "draining",
            extra={"drain_timeout_s": self.settings.DRAIN_TIMEOUT_S, "job_id": self.held.job_id if self.held else None},
        )
        # The orchestrator hears of the drain now, not at the next tick; the cadence itself is unchanged.
        self._send_beat()
        self._drain = asyncio.get_running_loop().create_task(self._drain_deadlines())

    async def _drain_deadlines(self) -> None:
        """The job may run DRAIN_TIMEOUT_S past the signal; then it is stopped and reported failed/timeout
        (retryable). The work loop itself stops claiming and bounds the deliveries (`_unless_stopping`)."""
        await asyncio.sleep(self.settings.DRAIN_TIMEOUT_S)
        current = self.runner.current
        if current is None:
            return
        with job_context(current.job_id):
            log.warning("drain deadline reached; stopping the job", extra={"step": current.step})
        self.runner.cancel(current.job_id, ErrorCode.timeout)
        await asyncio.sleep(CANCEL_GRACE_S + self.settings.OUTBOX_FLUSH_TIMEOUT_S)
        log.error("the job did not stop after its cancel; exiting without it (its lease runs out)")
        assert self._work is not None
        self._work.cancel()

    async def _deliver(self, aw: Awaitable[object]) -> None:
        """Outbox deliveries go on until done, except in a drain: then OUTBOX_FLUSH_TIMEOUT_S at most."""
        if await self._unless_stopping(aw, grace_s=self.settings.OUTBOX_FLUSH_TIMEOUT_S) is None:
            log.warning(
                "final statuses not delivered in time; they stay in the outbox for the next start",
                extra={"outbox": str(self.outbox.folder)},
            )

    async def _unless_stopping(self, aw: Awaitable[_T], grace_s: float = 0.0) -> _T | None:
        """`aw`'s result; or None, with `aw` cancelled, if it is still going `grace_s` after a signal."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and grace_s > 0:
                await asyncio.wait({task}, timeout=grace_s)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    # ------------------------------------------------------------ claiming

    def _finished(self) -> bool:
        return self.stopping.is_set() or bool(self.max_jobs and self.jobs_done >= self.max_jobs)

    async def _claim_loop(self) -> int:
        while not self._finished():
            if not await self._runner_ready():
                return ExitCode.FAILED
            try:
                # A claim cut short by a signal may already have been granted: that job's lease runs out.
                job = await self._unless_stopping(self.client.claim(self._claim_request()))
            except OrchestratorRejected as exc:
                await self._unless_stopping(asyncio.sleep(self._refused(exc)))
                continue
            self._refusals = 0
            if job is not None:
                await self._handle(job)
            elif self.exit_when_idle and not self.stopping.is_set():
                log.info("nothing queued; exiting (BUFFER_EXIT_WHEN_IDLE)")
                break
            else:
                await self._unless_stopping(asyncio.sleep(self.settings.CLAIM_POLL_S))
        return ExitCode.OK

    def _refused(self, exc: OrchestratorRejected) -> float:
        """Log a refused claim; returns the back-off before the next one (a bad key must not spin)."""
        self._refusals += 1
        delay = min(self.settings.RETRY_MAX_S, self.settings.CLAIM_POLL_S * 2 ** min(self._refusals, 16))
        hint = " check INTERNAL_API_KEY" if exc.status_code in (401, 403) else ""
        log.error(
            f"claim refused by the orchestrator (HTTP {exc.status_code});{hint}",
            extra={"error": str(exc), "retry_in_s": round(delay, 2), "refusals": self._refusals},
        )
        return delay

    async def _runner_ready(self) -> bool:
        """Wait out a GPU-process restart; False if the runner gave up (unhealthy)."""
        while self.runner.state is not RunnerState.ready:
            if self.runner.state is RunnerState.unhealthy:
                log.error("worker unhealthy; exiting", extra={"reason": self.runner.unhealthy_reason})
                return False
            await asyncio.sleep(READY_POLL_S)
        return True

    def _claim_request(self) -> ClaimRequest:
        return ClaimRequest(worker_id=self.worker_id, gpu_class=self.gpu_class, capabilities=self._capabilities())

    def _capabilities(self) -> Capabilities:
        modes = enabled_modes(self.settings, self.runner.device)
        return Capabilities(modes=modes, max_width=MAX_SIDE, max_height=MAX_SIDE, max_frames=MAX_FRAMES)

    @property
    def gpu_class(self) -> str:
        if self.settings.GPU_CLASS:
            return self.settings.GPU_CLASS
        device = self.runner.device
        return "unknown" if device is None else normalise_gpu_name(device.name)

    # ------------------------------------------------------------ one job

    async def _handle(self, claimed: ClaimedJob) -> None:
        self.held = held = HeldJob(claimed)
        with job_context(held.job_id):
            log.info("job claimed", extra={"attempt": claimed.attempt, "lease_seconds": claimed.lease_seconds})
            if claimed.lease_seconds <= self.settings.HEARTBEAT_INTERVAL_S:
                log.warning(
                    "lease shorter than the heartbeat interval; the job may be handed out again",
                    extra={"heartbeat_interval_s": self.settings.HEARTBEAT_INTERVAL_S},
                )
            running = asyncio.create_task(self._report_running(held))
            try:
                update = await self._execute(held)
            finally:
                running.cancel()
            if held.dropped:
                log.warning("job dropped: the orchestrator says it is no longer ours")
            else:
                await self._deliver(send_final(self.outbox, self.client, held.job_id, update))
        self.held = None
        self.jobs_done += 1

    async def _report_running(self, held: HeldJob) -> None:
        # Not outboxed, and in the background: the job need not wait for a slow orchestrator.
        try:
            outcome = await self.client.post_status(
                held.job_id, StatusUpdate(worker_id=self.worker_id, status="running", attempt=held.claimed.attempt)
            )
        except OrchestratorRejected as exc:
            log.warning("running status refused", extra={"error": str(exc)})
            return
        if outcome == "gone":
            held.dropped = True
            self.runner.cancel(held.job_id)

    async def _execute(self, held: HeldJob) -> StatusUpdate:
        """Run the job; its final status (completed with the result, or failed with the error)."""
        if held.cancel_requested or held.dropped:
            failure = JobFailure(ErrorCode.cancelled, "cancelled before it started")
        else:
            try:
                result = await self.runner.run(held.job_id, held.claimed.input, queued_s=0.0)
                return StatusUpdate(
                    worker_id=self.worker_id, status="completed", result=result, attempt=held.claimed.attempt
                )
            except JobFailure as exc:
                failure = exc
            except (Busy, NotReady) as exc:
                failure = JobFailure(ErrorCode.internal, f"the worker could not start the job: {exc}", retryable=True)
        return StatusUpdate(
            worker_id=self.worker_id, status="failed", error=failure.to_error(), attempt=held.claimed.attempt
        )

    def _on_progress(self, p: JobProgress) -> None:
        self.reporter.report_progress(p)
        if self.held is not None and self.held.job_id == p.job_id:
            self.held.stage, self.held.progress, self.held.step = p.stage, p.progress, p.step

    def _cancel(self, job_id: str) -> None:
        """The orchestrator asked (cancel requested, or the lease is lost): stop at the next safe point."""
        held = self.held
        if held is None or held.job_id != job_id or held.cancel_requested:
            return
        held.cancel_requested = True
        with job_context(job_id):
            log.info("cancelling job", extra={"stage": held.stage.value if held.stage else None, "step": held.step})
        self.runner.cancel(job_id)

    # ------------------------------------------------------------ heartbeats

    async def _heartbeats(self) -> None:
        """One beat every interval on a fixed grid (next = previous + interval): a slow answer or a busy
        moment never pushes the following beats later. A beat still unanswered at the next tick is
        superseded by it."""
        loop = asyncio.get_running_loop()
        interval = self.settings.HEARTBEAT_INTERVAL_S
        next_at = loop.time()
        while True:
            self._send_beat()
            next_at += interval
            late = loop.time() - next_at
            if late > 0:  # the loop itself was held up (or the process stopped): skip the missed slots
                next_at += math.ceil(late / interval) * interval
            await asyncio.sleep(next_at - loop.time())

    def _send_beat(self) -> None:
        """Send a beat now, without waiting for its answer; one still unanswered is superseded by it."""
        if self._beat is not None and not self._beat.done():
            self._beat.cancel()
            log.warning("heartbeat superseded: no answer in time")
        self._beat = asyncio.get_running_loop().create_task(self._beat_once())

    async def _beat_once(self) -> None:
        try:
            answer = await self.client.heartbeat(self.worker_id, self._heartbeat_body())
        except HeartbeatFailed as exc:
            log.warning("heartbeat failed", extra={"error": str(exc)})
            return
        except Exception:  # noqa: BLE001 - a bug here must cost one beat, never the heartbeat itself
            log.exception("heartbeat failed unexpectedly")
            return
        for job_id in answer.cancel_job_ids:
            self._cancel(job_id)

    def _heartbeat_body(self) -> HeartbeatRequest:
        held = self.held
        return HeartbeatRequest(
            gpu_class=self.gpu_class,
            state=self._state(),
            job_id=held.job_id if held else None,
            job_ids=[held.job_id] if held else [],  # v1.1: every job held, generating or still reporting
            stage=held.stage if held else None,
            progress=held.progress if held else 0.0,
            gpu=self._gpu(),
        )

    def _state(self) -> WorkerState:
        if self.stopping.is_set():
            return "draining"
        if self.held is not None:
            return "busy"
        return "idle" if self.accepting and self.runner.state is RunnerState.ready else "starting"

    def _gpu(self) -> GpuInfo:
        device = self.runner.device
        if device is None:
            return GpuInfo()
        # The child reports memory in use with its progress; the runner keeps the latest in its gauge.
        used = self.runner.metrics.registry.get_sample_value("fastwan_gpu_memory_used_bytes")
        used_mb = int(used) // 2**20 if used else device.memory_used_mb
        return GpuInfo(name=device.name, memory_used_mb=used_mb, memory_total_mb=device.memory_total_mb)


# ------------------------------------------------------------ identity


def normalise_gpu_name(name: str) -> str:
    """ "NVIDIA H100 80GB HBM3" → "nvidia-h100-80gb-hbm3"; "" → "cpu"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64] or "cpu"


def resolve_worker_id(settings: Settings) -> str:
    """BUFFER_WORKER_ID, else an id made once and kept in STATE_DIR/worker_id.

    It must survive restarts: a final status waiting in the outbox is only accepted from the worker that
    holds the job.
    """
    if settings.BUFFER_WORKER_ID:
        return settings.BUFFER_WORKER_ID
    path = settings.STATE_DIR / "worker_id"
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_text(encoding="utf-8").strip()
        if re.fullmatch(ID_PATTERN, kept):
            return kept
        log.warning("ignoring an invalid worker id on disk", extra={"path": str(path)})
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip("-.")[:64] or "host"
    worker_id = f"fastwan-{host}-{secrets.token_hex(4)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"{worker_id}\n".encode())
    return worker_id


# ------------------------------------------------------------ entry point


async def build_worker(settings: Settings) -> BufferWorker:
    from worker_app_fastwan.storage import make_storage

    settings.require_orchestrator()
    storage = await asyncio.to_thread(make_storage, settings)  # B2 authorises over the network
    client = OrchestratorClient.from_settings(settings)
    assert client is not None, "require_orchestrator() checked ORCHESTRATOR_BASE_URL"
    outbox = await asyncio.to_thread(Outbox, settings.STATE_DIR / "outbox")
    worker_id = await asyncio.to_thread(resolve_worker_id, settings)
    return BufferWorker(settings, JobRunner(settings, storage), client, outbox, worker_id)


async def run_buffer(settings: Settings) -> int:
    """`python -m worker_app_fastwan buffer`: returns the process exit code."""
    from worker_app_fastwan.settings import SettingsError
    from worker_app_fastwan.storage import StorageError

    try:
        worker = await build_worker(settings)
    except (SettingsError, StorageError) as exc:
        log.error("cannot start the buffer worker", extra={"error": str(exc)})
        return ExitCode.BAD_INPUT
    return await worker.run()
