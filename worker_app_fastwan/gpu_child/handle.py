"""The parent's handle on the GPU child: start it, run jobs in it, and supervise it, all in one place.

States, and the only changes `_to()` allows:

    starting ──Ready──▶ ready ──run()──▶ busy ──Done, or a job's Failed──▶ ready
        ▲                 │                │
        └── restart ◀─────┴─ exit ─────────┴─ fatal failure, exit, or a job that would not stop
    any of them ──▶ unhealthy (the model cannot load; MAX_FAILURES failures in a row)
    any of them ──▶ stopped (stop())

Callers await `wait_ready()`; nothing polls. The process itself (spawn, pipe, exit) is `process.ChildProcess`,
passed in as `spawn` so that a test can hand in a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.logs import job_context
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.gpu_child.messages import (
    ChildExited,
    DeviceInfo,
    Done,
    Failed,
    Progress,
    Ready,
    RunJob,
    Shutdown,
)
from worker_app_fastwan.gpu_child.process import ChildProcess

log = logging.getLogger(__name__)

MAX_FAILURES = 3  # in a row (a completed job resets the count): the third is final, the GPU is given up
CANCEL_GRACE_S = 15.0  # how long a cancelled job may take to reach its next safe point
STOP_TIMEOUT_S = 10.0
KILL_WAIT_S = 5.0


class ChildState(str, enum.Enum):
    starting = "starting"
    ready = "ready"
    busy = "busy"
    unhealthy = "unhealthy"
    stopped = "stopped"


_S = ChildState
_ALLOWED: dict[ChildState, frozenset[ChildState]] = {
    _S.starting: frozenset({_S.ready, _S.unhealthy, _S.stopped}),
    _S.ready: frozenset({_S.busy, _S.starting, _S.unhealthy, _S.stopped}),
    _S.busy: frozenset({_S.ready, _S.starting, _S.unhealthy, _S.stopped}),
    _S.unhealthy: frozenset({_S.stopped}),
    _S.stopped: frozenset({_S.starting, _S.stopped}),
}


class ChildJobFailure(JobFailure):
    """A job's failure in the child; `fatal`: the process is gone (and being restarted)."""

    def __init__(self, code: ErrorCode, message: str, retryable: bool, *, fatal: bool) -> None:
        super().__init__(code, message, retryable)
        self.fatal = fatal


class GpuChild:
    """Methods are called from the event loop. `spawn(settings)` makes the (not yet started) process.
    `load_gate`, shared by a box's slots, bounds how many of their processes load a model at once (a load
    reads every weight through host memory); a restart's load passes through it too."""

    def __init__(
        self,
        settings: Settings,
        *,
        spawn: Callable[[Settings], ChildProcess] = ChildProcess,
        load_gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.settings = settings
        self._spawn = spawn
        self._load_gate = load_gate
        self._proc: ChildProcess | None = None
        self._state = ChildState.starting
        self._changed = asyncio.Event()
        self.device: DeviceInfo | None = None
        self.load_s = 0.0
        self.unhealthy_reason: str | None = None
        self.failures = 0
        self._cancel_reason: ErrorCode | None = None
        self._exit_expected = False
        self._restarting: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ state

    @property
    def state(self) -> ChildState:
        return self._state

    def _to(self, state: ChildState) -> None:
        if state not in _ALLOWED[self._state]:
            raise RuntimeError(f"GPU process: no way from {self._state.value} to {state.value}")
        self._state = state
        self._changed.set()  # wakes every waiter; later ones wait on a fresh event
        self._changed = asyncio.Event()

    async def wait_ready(self) -> bool:
        """True once ready; False if it never will be (unhealthy, or stopped)."""
        while self._state in (ChildState.starting, ChildState.busy):
            await self._changed.wait()
        return self._state is ChildState.ready

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Spawn the child and wait until its model is loaded and warm; the state says how it went."""
        if self._state is ChildState.stopped:
            self._to(ChildState.starting)
        self._exit_expected = False
        gate = self._load_gate
        if gate is not None and gate.locked():
            log.info("waiting for other slots' model loads to end (SLOT_LOAD_CONCURRENCY)")
        async with gate or contextlib.nullcontext():
            proc, msg = await self._spawn_and_load()
        if isinstance(msg, Ready):
            self.device, self.load_s = msg.device, msg.load_s
            self._to(ChildState.ready)
            self._watching = asyncio.get_running_loop().create_task(self._watch(proc), name="gpu-child-watch")
            extra = {
                "backend": msg.device.backend,
                "device": msg.device.device,
                "load_s": round(msg.load_s, 2),
                "gpu_pid": proc.pid,
            }
            log.info("model ready", extra=extra)
            return
        exited = msg.exitcode if isinstance(msg, ChildExited) else None
        reason = msg.message if isinstance(msg, Failed) else f"the GPU process exited with code {exited}"
        await self._end(proc, STOP_TIMEOUT_S)
        self._give_up(reason)

    async def _spawn_and_load(self) -> tuple[ChildProcess, object]:
        """The process, and its first message: `Ready` once its model is loaded and warm, else why not."""
        self._proc = proc = self._spawn(self.settings)
        proc.start()
        return proc, await proc.events.get()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the child to exit (Shutdown); kill it if it has not within `timeout_s`."""
        for task in (self._restarting, self._watching):
            if task is not None:
                task.cancel()
        if self._proc is not None:
            await self._end(self._proc, timeout_s)
        self._to(ChildState.stopped)

    async def kill(self) -> None:
        """For a child that does not answer a cancel in time; the job it ran then fails (and it restarts)."""
        if self._proc is not None:
            self._exit_expected = True
            self._proc.kill()
            await self._wait_exit(self._proc, KILL_WAIT_S)

    async def _end(self, proc: ChildProcess, timeout_s: float) -> None:
        self._exit_expected = True
        with contextlib.suppress(OSError):  # already gone
            proc.send(Shutdown())
        if not await self._wait_exit(proc, timeout_s):
            proc.kill()
            await self._wait_exit(proc, KILL_WAIT_S)

    @staticmethod
    async def _wait_exit(proc: ChildProcess, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(proc.exited), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def _watch(self, proc: ChildProcess) -> None:
        """A child that exits between jobs (killed from outside, say) is restarted at once; during a job the
        job's own path (`run`) sees the exit and restarts it."""
        code = await asyncio.shield(proc.exited)
        if proc is self._proc and self._state is ChildState.ready and not self._exit_expected:
            self._restart(f"the GPU process exited with code {code} while idle")

    def _restart(self, why: str) -> None:
        self.failures += 1
        if self.failures >= MAX_FAILURES:
            self._give_up(f"the GPU process failed {self.failures} times; last: {why}")
            return
        log.warning("restarting the GPU process", extra={"why": why, "restart": self.failures})
        self._to(ChildState.starting)
        self._restarting = asyncio.get_running_loop().create_task(self._restart_now(), name="gpu-child-restart")

    async def _restart_now(self) -> None:
        with job_context(None):  # the restart outlives the job that triggered it
            if self._proc is not None:
                await self._end(self._proc, 2.0)
            await self.start()

    def _give_up(self, reason: str) -> None:
        self.unhealthy_reason = reason
        self._to(ChildState.unhealthy)
        log.error("worker unhealthy", extra={"reason": reason})

    # ------------------------------------------------------------ jobs

    def cancel(self, reason: ErrorCode = ErrorCode.cancelled) -> None:
        """Stop the running job at its next safe point; it then fails with `reason` (timeout for a drain)."""
        if self._state is ChildState.busy and self._proc is not None:
            self._cancel_reason = reason
            self._proc.cancel()

    async def run(self, job: RunJob, on_progress: Callable[[Progress], None]) -> Done:
        """Run one job (within JOB_TIMEOUT_S); raises ChildJobFailure. Only when ready."""
        proc = self._proc
        assert proc is not None, "start() first"
        self._to(ChildState.busy)
        self._cancel_reason = None
        proc.clear_cancel()
        try:
            proc.send(job)
        except OSError:
            return self._job_ended(ChildExited(exitcode=None))
        try:
            end = await asyncio.wait_for(self._until_end(proc, on_progress), self.settings.JOB_TIMEOUT_S)
        except asyncio.TimeoutError:
            await self._stop_stuck_job(proc)
            raise ChildJobFailure(
                ErrorCode.timeout, f"the job exceeded JOB_TIMEOUT_S={self.settings.JOB_TIMEOUT_S:g}s", True, fatal=False
            ) from None
        return self._job_ended(end)

    @staticmethod
    async def _until_end(proc: ChildProcess, on_progress: Callable[[Progress], None]) -> Done | Failed | ChildExited:
        while True:
            msg = await proc.events.get()
            if isinstance(msg, Progress):
                on_progress(msg)
            elif isinstance(msg, (Done, Failed, ChildExited)):
                return msg

    def _job_ended(self, end: Done | Failed | ChildExited) -> Done:
        if isinstance(end, Done):
            self.failures = 0  # only consecutive failures make the worker unhealthy
            self._to(ChildState.ready)
            return end
        if isinstance(end, Failed):
            failure = ChildJobFailure(end.code, end.message, end.retryable, fatal=end.fatal)
        else:
            message = f"the GPU process exited with code {end.exitcode} during the job"
            failure = ChildJobFailure(ErrorCode.generation_failed, message, True, fatal=True)
        if failure.fatal:
            self._restart(failure.message)
        else:
            self._to(ChildState.ready)
        if self._cancel_reason is ErrorCode.timeout:  # cancelled, or killed, by a drain deadline
            raise ChildJobFailure(
                ErrorCode.timeout, "the job was stopped by the drain deadline", True, fatal=failure.fatal
            )
        raise failure

    async def _stop_stuck_job(self, proc: ChildProcess) -> None:
        """After a job timeout: ask the child to stop; kill and restart it if it does not in CANCEL_GRACE_S."""
        proc.cancel()
        try:
            end = await asyncio.wait_for(self._until_end(proc, lambda _: None), CANCEL_GRACE_S)
        except asyncio.TimeoutError:
            log.warning("GPU process did not stop in time; killing it")
            await self.kill()
            self._restart("killed after a job timeout")
            return
        if isinstance(end, ChildExited) or (isinstance(end, Failed) and end.fatal):
            self._restart("exited after a job timeout")
        else:
            self._to(ChildState.ready)
