"""The long-lived GPU child process that owns the model, and `GpuChild`, the parent's handle on it.

Generation holds the GIL and the GPU for seconds at a time; in a child process it cannot starve the
parent's event loop (HTTP, heartbeats, uploads). The parent can cancel at a safe point (a shared event
checked between denoising steps and decoded chunks), kill a stuck child, and restart one that crashed.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from worker_app_fastwan.child_env import child_settings, minimal_env, only_environment
from worker_app_fastwan.errors import JobFailure
from worker_app_fastwan.messages import DeviceInfo, Done, Failed, Progress, Ready, RunJob, Shutdown
from worker_app_fastwan.schema import ErrorCode, JobInput, Stage
from worker_app_fastwan.settings import Settings

log = logging.getLogger(__name__)

LOAD_FAILED_EXIT = 3
FATAL_GPU_EXIT = 4
CANCEL_GRACE_S = 15.0


@dataclass(frozen=True)
class ChildExited:
    exitcode: int | None


# ---------------------------------------------------------------- child side (runs in the spawned process)


def child_main(conn: Connection, cancel: mp.synchronize.Event, settings: Settings) -> None:
    from worker_app_fastwan.logs import adopt_library_loggers, setup_logging

    setup_logging(settings.LOG_LEVEL, process="gpu-child", fmt=settings.LOG_FORMAT)
    adopt_library_loggers()
    _die_with_parent()
    # The parent decides when the child stops (Shutdown, or a kill after a timeout); a Ctrl-C or a
    # SIGTERM sent to the whole process group must not cut a job short behind the parent's back.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    backend, codec = _load(conn, settings)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if isinstance(msg, Shutdown):
            break
        _run_job(conn, cancel, backend, settings, codec, msg)
    backend.close()


def _die_with_parent() -> None:
    """A parent killed with SIGKILL must not leave an orphan holding the GPU (Linux prctl)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _load(conn: Connection, settings: Settings):
    from worker_app_fastwan.encoder import resolve_codec
    from worker_app_fastwan.model_fetch import ModelUnavailable
    from worker_app_fastwan.pipelines import make_backend

    start = time.perf_counter()
    try:
        codec = resolve_codec(settings.ENCODER)
        backend = make_backend(settings)
        backend.load()
        backend.warmup()
    except Exception as exc:  # noqa: BLE001 - any load failure is reported, then the child exits
        if not isinstance(exc, ModelUnavailable):  # that one is a known condition in one line: the parent logs it
            log.exception("model load failed")
        conn.send(Failed(None, ErrorCode.internal.value, f"model load failed: {exc}"[:1000], True, fatal=True))
        sys.exit(LOAD_FAILED_EXIT)
    log.info("video encoder", extra={"codec": codec})
    conn.send(Ready(backend.device_info(), time.perf_counter() - start))
    return backend, codec


class _StageClock:
    """Stage durations inside the child, and the cancel check at every safe point."""

    def __init__(self, conn: Connection, cancel, job_id: str, backend) -> None:
        self.conn, self.cancel, self.job_id, self.backend = conn, cancel, job_id, backend
        self.stage, self.since = None, time.perf_counter()
        self.stage_s: dict[str, float] = {}

    def __call__(self, stage: str, step: int | None = None, total: int | None = None) -> None:
        self.check_cancel()
        now = time.perf_counter()
        if stage != self.stage:
            if self.stage is not None:
                self.stage_s[self.stage] = self.stage_s.get(self.stage, 0.0) + now - self.since
            self.stage, self.since = stage, now
        mem = self.backend.device_info().memory_used_mb
        self.conn.send(Progress(self.job_id, stage, step, total, mem))

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise JobFailure(ErrorCode.cancelled, "cancelled at a safe point")

    def finish(self) -> dict[str, float]:
        """Close the last stage; no cancel check: the video is already complete."""
        if self.stage is not None:
            self.stage_s[self.stage] = self.stage_s.get(self.stage, 0.0) + time.perf_counter() - self.since
        return self.stage_s


def _run_job(conn: Connection, cancel, backend, settings: Settings, codec: str, msg: RunJob) -> None:
    from worker_app_fastwan.encoder import Mp4Writer

    clock = _StageClock(conn, cancel, msg.job_id, backend)
    writer = None
    try:
        job = JobInput.model_validate(msg.input).model_copy(update={"seed": msg.seed})
        image = _open_image(msg.image_path)
        start = time.perf_counter()
        generation = backend.generate(job, image, clock)
        writer = Mp4Writer(
            Path(msg.out_path),
            job.width,
            job.height,
            job.fps,
            preset=settings.ENCODER_PRESET,
            crf=settings.ENCODER_CRF,
            codec=codec,
        )
        for chunk in generation.frames:
            clock.check_cancel()
            writer.write(chunk)
        inference_s = time.perf_counter() - start
        clock(Stage.encoding_video.value)
        tail_s = writer.close()
        stage_s = clock.finish()
        conn.send(
            Done(
                msg.job_id,
                generation.seed,
                msg.out_path,
                writer.frames_written,
                inference_s,
                stage_s.get(Stage.encoding_video.value, tail_s),
                tail_s,
                stage_s,
            )
        )
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a typed message to the parent
        if writer is not None:
            writer.abort()
        _report_failure(conn, backend, msg.job_id, exc)


def _open_image(path: str | None):
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def _report_failure(conn: Connection, backend, job_id: str, exc: BaseException) -> None:
    import torch

    if isinstance(exc, JobFailure):
        conn.send(Failed(job_id, exc.code.value, exc.message, exc.retryable))
    elif isinstance(exc, torch.OutOfMemoryError):
        backend.free_memory()
        gc.collect()
        conn.send(
            Failed(
                job_id,
                ErrorCode.out_of_memory.value,
                f"the GPU ran out of memory: {str(exc).splitlines()[0][:300]}",
                True,
            )
        )
    elif _is_fatal_gpu_error(exc):
        log.exception("fatal GPU error; the GPU process exits and is restarted")
        conn.send(Failed(job_id, ErrorCode.generation_failed.value, f"fatal GPU error: {exc}"[:1000], True, fatal=True))
        sys.exit(FATAL_GPU_EXIT)
    else:
        log.exception("generation failed")
        conn.send(Failed(job_id, ErrorCode.generation_failed.value, f"{type(exc).__name__}: {exc}"[:1000], True))


def _is_fatal_gpu_error(exc: BaseException) -> bool:
    """After these the CUDA context is unusable until the process restarts."""
    text = str(exc)
    return any(
        s in text
        for s in (
            "CUDA error",
            "illegal memory access",
            "device-side assert",
            "CUBLAS_STATUS",
            "cuDNN error",
            "unspecified launch failure",
        )
    )


# ---------------------------------------------------------------- parent side


class GpuChild:
    """Start, talk to, cancel, kill and restart the GPU child. Methods are called from the event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ctx = mp.get_context("spawn")
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        # The first semaphore starts multiprocessing's resource tracker, a process of its own: no secrets there either.
        with only_environment(minimal_env(os.environ)):
            self._cancel = self._ctx.Event()
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self.device: DeviceInfo | None = None
        self.load_s = 0.0
        # Called on the loop when the child exits without being asked to (killed between jobs, say).
        self.on_unexpected_exit: Callable[[int | None], None] | None = None
        self._exit_expected = False

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> DeviceInfo:
        """Spawn the child and wait until its model is loaded and warm; raises JobFailure if it cannot."""
        parent_conn, child_conn = self._ctx.Pipe()
        self._events = asyncio.Queue()
        self._cancel.clear()
        self._exit_expected = False
        self._proc = self._ctx.Process(
            target=child_main, args=(child_conn, self._cancel, child_settings(self.settings)), name="gpu-child"
        )
        with only_environment(minimal_env(os.environ)):  # no B2 keys, no INTERNAL_API_KEY in the child
            self._proc.start()
        child_conn.close()
        self._conn = parent_conn
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._read,
            args=(parent_conn, self._proc, loop, self._events, self._exited),
            name="gpu-child-reader",
            daemon=True,
        ).start()
        msg = await self._events.get()
        if isinstance(msg, Ready):
            self.device, self.load_s = msg.device, msg.load_s
            return msg.device
        await self.stop()
        reason = msg.message if isinstance(msg, Failed) else f"the GPU process exited with code {msg.exitcode}"
        raise JobFailure(ErrorCode.internal, reason)

    @staticmethod
    def _read(conn: Connection, proc, loop: asyncio.AbstractEventLoop, events: asyncio.Queue, exited) -> None:
        # A thread, not loop.add_reader: recv() of a whole message may block, and must never block the loop.
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                proc.join()
                msg = ChildExited(proc.exitcode)
            try:
                loop.call_soon_threadsafe(events.put_nowait, msg)
                if isinstance(msg, ChildExited):
                    loop.call_soon_threadsafe(exited, proc, msg.exitcode)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return
            if isinstance(msg, ChildExited):
                return

    def _exited(self, proc, exitcode: int | None) -> None:
        if proc is self._proc and not self._exit_expected and self.on_unexpected_exit is not None:
            self.on_unexpected_exit(exitcode)

    async def run(self, job: RunJob, on_progress: Callable[[Progress], None]) -> Done:
        """Send one job; raises JobFailure on a failed job or a child that exited (`fatal` tells which)."""
        assert self._conn is not None, "start() first"
        self._cancel.clear()
        try:
            self._conn.send(job)
        except OSError:  # the child is gone; its exit code tells why
            code = self._proc.exitcode if self._proc else None
            raise ChildJobFailure(
                ErrorCode.generation_failed, f"the GPU process had exited (code {code})", True, fatal=True
            ) from None
        while True:
            msg = await self._events.get()
            if isinstance(msg, Progress):
                on_progress(msg)
            elif isinstance(msg, Done):
                return msg
            elif isinstance(msg, Failed):
                raise ChildJobFailure(msg.code, msg.message, msg.retryable, fatal=msg.fatal)
            elif isinstance(msg, ChildExited):
                raise ChildJobFailure(
                    ErrorCode.generation_failed,
                    f"the GPU process exited with code {msg.exitcode} during the job",
                    True,
                    fatal=True,
                )

    def cancel(self) -> None:
        self._cancel.set()

    async def wait_job_end(self, timeout_s: float) -> bool:
        """After a cancel: True once the child has reported the job's end (or exited) within timeout_s."""

        async def _until_end() -> None:
            while isinstance(await self._events.get(), Progress):
                pass

        try:
            await asyncio.wait_for(_until_end(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def kill(self) -> None:
        """For a child that does not answer a cancel in time."""
        self._exit_expected = True
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        await self._wait_exit(5.0)

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self._proc is None:
            return
        self._exit_expected = True
        if self._proc.is_alive() and self._conn is not None:
            try:
                self._conn.send(Shutdown())
            except OSError:
                pass
            await self._wait_exit(timeout_s)
        if self._proc.is_alive():
            await self.kill()

    async def _wait_exit(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while self._proc.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


class ChildJobFailure(JobFailure):
    """A JobFailure from the child; `fatal` means the child is gone and must be restarted."""

    def __init__(self, code: ErrorCode | str, message: str, retryable: bool, *, fatal: bool) -> None:
        super().__init__(code, message, retryable)
        self.fatal = fatal
