"""The one job path both modes call: validate → download image → GPU child → upload → result.

Runs in the parent's event loop. The GPU child does generation and encoding; uploads run in a thread.
Every failure ends as a `JobFailure` with a protocol error code; the runner stays usable after any of them.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker_app_fastwan.errors import JobFailure
from worker_app_fastwan.gpu_child import CANCEL_GRACE_S, ChildJobFailure, GpuChild
from worker_app_fastwan.logs import job_context
from worker_app_fastwan.messages import DeviceInfo, Progress, RunJob
from worker_app_fastwan.metrics import Metrics
from worker_app_fastwan.modes import check_mode
from worker_app_fastwan.schema import MAX_SEED, ErrorCode, JobInput, JobResult, Stage, Timings, parse_job_input
from worker_app_fastwan.settings import Settings

log = logging.getLogger(__name__)

# Where each stage starts in a job's overall progress; denoising fills the span up to decoding.
STAGE_START = {
    Stage.queued: 0.0,
    Stage.downloading: 0.02,
    Stage.encoding_prompt: 0.05,
    Stage.denoising: 0.1,
    Stage.decoding: 0.8,
    Stage.encoding_video: 0.9,
    Stage.uploading: 0.95,
}
MAX_CHILD_RESTARTS = 3


class RunnerState(str, enum.Enum):
    starting = "starting"
    ready = "ready"
    busy = "busy"
    unhealthy = "unhealthy"


class Busy(Exception):
    """A job is already running: this worker takes one at a time."""


class NotReady(Exception):
    """The model is still loading, or the GPU process cannot be started."""


@dataclass
class JobProgress:
    """What a mode shows of the running job (heartbeats, /health)."""

    job_id: str
    stage: Stage = Stage.queued
    progress: float = 0.0
    step: int | None = None
    total_steps: int | None = None


ProgressListener = Callable[[JobProgress], None]


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        storage,
        *,
        metrics: Metrics | None = None,
        listeners: list[ProgressListener] | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.metrics = metrics or Metrics()
        self.listeners = list(listeners or [])
        self.child = GpuChild(settings)
        self.child.on_unexpected_exit = self._child_died
        self.state = RunnerState.starting
        self.unhealthy_reason: str | None = None
        self.current: JobProgress | None = None
        self._lock = asyncio.Lock()
        self._cancel_reason: ErrorCode | None = None
        self._restarts = 0
        self._restarting: asyncio.Task | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load and warm the model in the GPU child; the state says how it went."""
        try:
            device = await self.child.start()
        except JobFailure as exc:
            self._mark_unhealthy(exc.message)
            return
        self.state = RunnerState.ready
        self._record_gpu(device.memory_used_mb, device.memory_total_mb)
        log.info(
            "model ready",
            extra={"backend": device.backend, "device": device.device, "load_s": round(self.child.load_s, 2)},
        )

    async def close(self) -> None:
        if self._restarting is not None:
            self._restarting.cancel()
        await self.child.stop()

    @property
    def device(self) -> DeviceInfo | None:
        return self.child.device

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def cancel(self, job_id: str, reason: ErrorCode = ErrorCode.cancelled) -> bool:
        """Stop the running job at its next safe point; False if it is not running here."""
        if self.current is None or self.current.job_id != job_id:
            return False
        self._cancel_reason = reason
        self.child.cancel()
        return True

    # ------------------------------------------------------------ the job

    async def run(
        self, job_id: str, raw_input: Any, *, queued_s: float = 0.0, image_file: Path | None = None
    ) -> JobResult:
        """Run one job to a result, or raise JobFailure. Raises Busy / NotReady without starting it."""
        if self._lock.locked():
            raise Busy(f"job {self.current.job_id if self.current else '?'} is running")
        async with self._lock:
            if self.state is not RunnerState.ready:
                raise NotReady(self.unhealthy_reason or "the model is still loading")
            self.state = RunnerState.busy
            self.metrics.busy.set(1)
            try:
                with job_context(job_id):
                    return await self._run_observed(job_id, raw_input, queued_s, image_file)
            finally:
                self.current = None
                self._cancel_reason = None
                self.metrics.busy.set(0)
                if self.state is RunnerState.busy:
                    self.state = RunnerState.ready

    async def _run_observed(self, job_id: str, raw_input: Any, queued_s: float, image_file: Path | None) -> JobResult:
        start = time.monotonic()
        self.metrics.queue_wait_seconds.observe(queued_s)
        try:
            result = await self._run(job_id, raw_input, queued_s, image_file)
        except JobFailure as exc:
            self.metrics.jobs.labels("failed", exc.code.value).inc()
            log.warning("job failed", extra={"code": exc.code.value, "error": exc.message, "retryable": exc.retryable})
            raise
        self._restarts = 0  # only consecutive GPU-process failures make the worker unhealthy
        self.metrics.jobs.labels("completed", "").inc()
        self.metrics.job_seconds.observe(time.monotonic() - start)
        log.info(
            "job completed", extra={"video_url": result.video_url.split("?")[0], "timings": result.timings.model_dump()}
        )
        return result

    async def _run(self, job_id: str, raw_input: Any, queued_s: float, image_file: Path | None) -> JobResult:
        """`image_file`: a local image (the one-shot CLI) instead of downloading `image_url`."""
        start = time.monotonic()
        self.current = JobProgress(job_id)
        job = parse_job_input(raw_input)
        mode = "i2v" if job.image_url or image_file else "t2v"
        self._check_capacity(job, mode)
        seed = job.seed if job.seed is not None else secrets.randbelow(MAX_SEED)
        work = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=self._work_root()))
        try:
            image_path, download_s = (str(image_file), 0.0) if image_file else await self._download(job, work)
            done = await self._generate(job_id, job, seed, work, image_path)
            video = Path(done.out_path)
            self._set_stage(Stage.uploading)
            upload_start = time.monotonic()
            digest, stored = await asyncio.to_thread(self._hash_and_upload, video, job_id)
            upload_s = time.monotonic() - upload_start
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        self._observe_stages(done.stage_s, download_s, upload_s)
        timings = Timings(
            queue_s=round(queued_s, 3),
            download_s=round(download_s, 3),
            inference_s=round(done.inference_s, 3),
            encode_s=round(done.encode_tail_s, 3),
            upload_s=round(upload_s, 3),
            total_s=round(queued_s + time.monotonic() - start, 3),
        )
        return JobResult(
            job_id=job_id,
            video_url=stored.url,
            storage_key=stored.key,
            width=job.width,
            height=job.height,
            num_frames=done.frames,
            fps=job.fps,
            seed=done.seed,
            mode=mode,
            bytes=stored.bytes,
            sha256=digest,
            timings=timings,
        )

    def _check_capacity(self, job: JobInput, mode: str) -> None:
        """Refuse before any GPU work what this backend or card cannot do."""
        device = self.child.device
        check_mode(mode, self.settings, device)
        if device is None:
            return
        if device.device.startswith("cuda"):
            from worker_app_fastwan.offload import check_job_fits

            check_job_fits(
                job.width,
                job.height,
                job.num_frames,
                device.memory_total_mb / 1024,
                device.offload_profile,
                vae_dtype=self.settings.VAE_DTYPE,
            )

    def _work_root(self) -> Path:
        root = self.settings.STATE_DIR / "work"
        root.mkdir(parents=True, exist_ok=True)
        return root

    async def _download(self, job: JobInput, work: Path) -> tuple[str | None, float]:
        if job.image_url is None:
            return None, 0.0
        from worker_app_fastwan.image_input import download_image

        self._set_stage(Stage.downloading)
        start = time.monotonic()
        path = await download_image(
            job.image_url,
            work,
            allow_private=self.settings.ALLOW_PRIVATE_IMAGE_URLS,
            trusted_origin=self.settings.ORCHESTRATOR_BASE_URL,  # it serves the images uploaded to it
            max_bytes=self.settings.MAX_IMAGE_BYTES,
            timeout_s=self.settings.IMAGE_TIMEOUT_S,
        )
        return str(path), time.monotonic() - start

    async def _generate(self, job_id: str, job: JobInput, seed: int, work: Path, image_path: str | None):
        request = RunJob(
            job_id=job_id,
            input=job.model_dump(),
            seed=seed,
            out_path=str(work / f"{job_id}.mp4"),
            image_path=image_path,
        )
        try:
            return await asyncio.wait_for(self.child.run(request, self._on_child_progress), self.settings.JOB_TIMEOUT_S)
        except asyncio.TimeoutError:
            await self._stop_stuck_job(ErrorCode.timeout)
            raise JobFailure(
                ErrorCode.timeout, f"the job exceeded JOB_TIMEOUT_S={self.settings.JOB_TIMEOUT_S:g}s"
            ) from None
        except ChildJobFailure as exc:
            if exc.fatal:
                self._schedule_restart(exc.message)
            if exc.code is ErrorCode.cancelled and self._cancel_reason is ErrorCode.timeout:
                raise JobFailure(ErrorCode.timeout, "the job was stopped by the drain deadline") from None
            raise JobFailure(exc.code, exc.message, exc.retryable) from None

    async def _stop_stuck_job(self, reason: ErrorCode) -> None:
        """Ask the child to stop at a safe point; kill and restart it if it does not answer in time."""
        self._cancel_reason = reason
        self.child.cancel()
        if await self.child.wait_job_end(CANCEL_GRACE_S) and self.child.alive:
            return
        log.warning("GPU process did not stop in time; killing it")
        await self.child.kill()
        self._schedule_restart("killed after a job timeout")

    def _child_died(self, exitcode: int | None) -> None:
        """The GPU process exited on its own. During a job, the job's path reports and restarts it."""
        if self.busy or self.state is RunnerState.unhealthy:
            return
        self._schedule_restart(f"the GPU process exited with code {exitcode} while idle")

    def _schedule_restart(self, why: str) -> None:
        self._restarts += 1
        if self._restarts > MAX_CHILD_RESTARTS:
            self._mark_unhealthy(f"the GPU process failed {self._restarts} times; last: {why}")
            return
        log.warning("restarting the GPU process", extra={"why": why, "restart": self._restarts})
        self.state = RunnerState.starting
        self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        with job_context(None):  # the restart outlives the job that triggered it
            await self.child.stop(timeout_s=2.0)
            await self.start()

    def _mark_unhealthy(self, reason: str) -> None:
        self.state = RunnerState.unhealthy
        self.unhealthy_reason = reason
        log.error("worker unhealthy", extra={"reason": reason})

    def _hash_and_upload(self, video: Path, job_id: str):
        digest = hashlib.sha256()
        with video.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        sha256 = digest.hexdigest()
        return sha256, self.storage.upload(video, job_id, sha256)

    # ------------------------------------------------------------ progress

    def _on_child_progress(self, msg: Progress) -> None:
        if msg.memory_used_mb:
            self._record_gpu(msg.memory_used_mb, None)
        self._set_stage(Stage(msg.stage), msg.step, msg.total_steps)

    def _set_stage(self, stage: Stage, step: int | None = None, total: int | None = None) -> None:
        current = self.current
        if current is None:
            return
        value = STAGE_START[stage]
        if stage is Stage.denoising and step is not None and total:
            value += (STAGE_START[Stage.decoding] - value) * step / total
        current.stage, current.step, current.total_steps = stage, step, total
        current.progress = max(current.progress, round(value, 4))
        for listener in self.listeners:
            listener(current)

    def _record_gpu(self, used_mb: int, total_mb: int | None) -> None:
        self.metrics.gpu_memory_used.set(used_mb * 2**20)
        if total_mb is not None:
            self.metrics.gpu_memory_total.set(total_mb * 2**20)

    def _observe_stages(self, stage_s: dict[str, float], download_s: float, upload_s: float) -> None:
        for stage, seconds in {**stage_s, Stage.downloading.value: download_s, Stage.uploading.value: upload_s}.items():
            if seconds:
                self.metrics.stage_seconds.labels(stage).observe(seconds)
