"""The GPU child's own side: load the model once, then run one job per `RunJob` message until `Shutdown`.

Runs in a spawned process (`process.ChildProcess`), the only one that imports torch. Every failure of a job
becomes a typed `Failed` message; after one that leaves the CUDA context unusable the process exits, and the
parent's handle (`handle.GpuChild`) restarts it.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import signal
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode, JobInput, Stage
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.gpu_child.messages import Done, Failed, Progress, Ready, RunJob, Shutdown

log = logging.getLogger(__name__)

LOAD_FAILED_EXIT = 3
FATAL_GPU_EXIT = 4
# After these the CUDA context is unusable until the process restarts.
FATAL_GPU_ERRORS = (
    "CUDA error",
    "illegal memory access",
    "device-side assert",
    "CUBLAS_STATUS",
    "cuDNN error",
    "unspecified launch failure",
)


def child_main(conn: Connection, cancel: Event, settings: Settings) -> None:
    from worker_app_fastwan.core.logs import setup_logging

    setup_logging(settings.LOG_LEVEL, process="gpu-child", fmt=settings.LOG_FORMAT)
    _die_with_parent()
    # The parent decides when the child stops (Shutdown, or a kill after a timeout); a Ctrl-C or a
    # SIGTERM sent to the whole process group must not cut a job short behind the parent's back.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from worker_app_fastwan.gpu_child.compile_cache import use_compile_caches

    use_compile_caches(settings)
    backend, codec = _load_frozen(conn, settings)
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


def _load_frozen(conn: Connection, settings: Settings) -> tuple[Any, str]:
    """`_load` without the cyclic garbage collector, then everything it made frozen out of later collections.

    Importing torch, transformers and diffusers and building the model make hundreds of thousands of objects
    that live as long as the process. The collector would scan them again and again while they are made
    (5-17% of the CPU of the tiny model's start, measured) and at every full collection during a job after.
    """
    gc.disable()
    try:
        loaded = _load(conn, settings)
        gc.collect()
        gc.freeze()
    finally:
        gc.enable()
    return loaded


def _load(conn: Connection, settings: Settings) -> tuple[Any, str]:
    from worker_app_fastwan.core.errors import ModelUnavailable
    from worker_app_fastwan.gpu_child.encoder import resolve_codec
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
        message = f"model load failed: {exc}"[:1000]
        conn.send(Failed(job_id=None, code=ErrorCode.internal, message=message, retryable=True, fatal=True))
        sys.exit(LOAD_FAILED_EXIT)
    log.info("video encoder", extra={"codec": codec})
    conn.send(Ready(device=backend.device_info(), load_s=time.perf_counter() - start))
    return backend, codec


class _StageClock:
    """Stage durations inside the child, and the cancel check at every safe point."""

    def __init__(self, conn: Connection, cancel: Event, job_id: str, backend: Any) -> None:
        self.conn, self.cancel, self.job_id, self.backend = conn, cancel, job_id, backend
        self.stage: Stage | None = None
        self.since = time.perf_counter()
        self.stage_s: dict[str, float] = {}

    def __call__(self, stage: Stage | str, step: int | None = None, total: int | None = None) -> None:
        self.check_cancel()
        stage = Stage(stage)
        now = time.perf_counter()
        if stage is not self.stage:
            self._close_stage(now)
            self.stage, self.since = stage, now
        memory_used_mb = self.backend.device_info().memory_used_mb
        progress = Progress(
            job_id=self.job_id, stage=stage, step=step, total_steps=total, memory_used_mb=memory_used_mb
        )
        self.conn.send(progress)

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise JobFailure(ErrorCode.cancelled, "cancelled at a safe point")

    def finish(self) -> dict[str, float]:
        """Close the last stage; no cancel check: the video is already complete."""
        self._close_stage(time.perf_counter())
        return self.stage_s

    def _close_stage(self, now: float) -> None:
        if self.stage is not None:
            self.stage_s[self.stage.value] = self.stage_s.get(self.stage.value, 0.0) + now - self.since


def _run_job(conn: Connection, cancel: Event, backend: Any, settings: Settings, codec: str, msg: RunJob) -> None:
    from worker_app_fastwan.gpu_child.encoder import Mp4Writer
    from worker_app_fastwan.gpu_child.poster import PosterFrame

    clock = _StageClock(conn, cancel, msg.job_id, backend)
    writer = None
    generation = None
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
        poster = PosterFrame(job.num_frames)
        for chunk in generation.frames:
            clock.check_cancel()
            writer.write(chunk)
            poster.offer(chunk)
        inference_s = time.perf_counter() - start
        clock(Stage.encoding_video)
        tail_s = writer.close()
        poster_path, poster_s = _poster(poster, Path(msg.out_path).with_suffix(".jpg"))
        done = Done(
            job_id=msg.job_id,
            seed=generation.seed,
            out_path=msg.out_path,
            frames=writer.frames_written,
            inference_s=inference_s,
            encode_tail_s=tail_s,
            stage_s=clock.finish(),
            poster_path=poster_path,
            poster_s=poster_s,
        )
        conn.send(done)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a typed message to the parent
        if writer is not None:
            writer.abort()
        if generation is not None and hasattr(generation.frames, "close"):
            generation.frames.close()  # a decode stopped half-way runs its own clean-up now, not at collection
        _report_failure(conn, backend, msg.job_id, exc)


def _poster(picked: Any, path: Path) -> tuple[str | None, float]:
    """The poster from the frame kept while encoding: (its path, seconds), or (None, 0) if it failed."""
    from worker_app_fastwan.gpu_child.poster import write_poster

    start = time.perf_counter()
    try:
        if picked.frame is None:
            return None, 0.0
        size = write_poster(picked.frame, path)
    except Exception:  # noqa: BLE001 - a poster is worth less than the video it goes with
        log.exception("poster failed; the video goes without one")
        return None, 0.0
    seconds = time.perf_counter() - start
    log.info("poster written", extra={"bytes": size, "poster_ms": round(seconds * 1000, 1)})
    return str(path), seconds


def _open_image(path: str | None) -> Any:
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def _report_failure(conn: Connection, backend: Any, job_id: str, exc: BaseException) -> None:
    import torch

    oom = isinstance(exc, torch.OutOfMemoryError)
    fatal = not isinstance(exc, JobFailure) and not oom and any(s in str(exc) for s in FATAL_GPU_ERRORS)
    if not fatal:
        # Every job that ends early (cancelled, timed out, out of memory, any error) may leave a component
        # on the GPU; the process serves the next job, so it is released before the failure is reported.
        _free_memory(backend, collect=oom)
    if isinstance(exc, JobFailure):
        conn.send(Failed(job_id=job_id, code=exc.code, message=exc.message, retryable=exc.retryable))
    elif oom:
        message = f"the GPU ran out of memory: {str(exc).splitlines()[0][:300]}"
        conn.send(Failed(job_id=job_id, code=ErrorCode.out_of_memory, message=message, retryable=True))
    elif fatal:
        log.exception("fatal GPU error; the GPU process exits and is restarted")
        message = f"fatal GPU error: {exc}"[:1000]
        conn.send(Failed(job_id=job_id, code=ErrorCode.generation_failed, message=message, retryable=True, fatal=True))
        sys.exit(FATAL_GPU_EXIT)
    else:
        log.exception("generation failed")
        message = f"{type(exc).__name__}: {exc}"[:1000]
        conn.send(Failed(job_id=job_id, code=ErrorCode.generation_failed, message=message, retryable=True))


def _free_memory(backend: Any, *, collect: bool) -> None:
    if collect:
        gc.collect()  # an OOM's traceback held the job's tensors: drop them before the cache is emptied
    try:
        backend.free_memory()
    except Exception:  # noqa: BLE001 - the failure is still reported; a broken device fails the next job
        log.exception("releasing GPU memory after a failed job failed")
