"""The one job path both modes call: validate → download image → GPU child → upload → result (`run`), or in
two halves, `generate` (the GPU's part) and `finish` (the upload), so a buffer slot can start the next job
between them.

Runs in the parent's event loop. The GPU child does generation and encoding; uploads run in a thread.
Every failure ends as a `JobFailure` with a protocol error code; the runner stays usable after any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from worker_app_fastwan.core.devices import DeviceInfo, SlotDevice
from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.job_progress import JobProgress, ProgressListener
from worker_app_fastwan.core.logs import job_context
from worker_app_fastwan.core.metrics import Metrics
from worker_app_fastwan.core.protocol import Capabilities, GpuInfo, OutputTarget
from worker_app_fastwan.core.schema import MAX_SEED, ErrorCode, JobInput, JobResult, Stage
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.edge.job_input import parse_job_input
from worker_app_fastwan.gpu_child.handle import CANCEL_GRACE_S, ChildJobFailure, ChildState, GpuChild
from worker_app_fastwan.gpu_child.messages import Done, Progress, RunJob
from worker_app_fastwan.gpu_child.process import ChildProcess
from worker_app_fastwan.job.capacity import capabilities, check_capacity
from worker_app_fastwan.job.image import fetch_image
from worker_app_fastwan.job.result import Generated, build_result, hash_and_upload, observe_stages
from worker_app_fastwan.job.storage import Storage

log = logging.getLogger(__name__)


class Busy(Exception):
    """A job is already running: this runner takes one at a time."""


class NotReady(Exception):
    """The model is still loading, or the GPU process cannot be started."""


RunnerState = ChildState  # the runner's states are its GPU process's, but `busy` for the whole of a job


class JobRunner:
    """Runs jobs one at a time in `child`, the GPU process's supervised handle, which is passed in (cog's
    `PredictionRunner(worker=…)`). `build_runner()` is the one place that puts the two together."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        *,
        child: GpuChild,
        metrics: Metrics | None = None,
        listeners: Sequence[ProgressListener] = (),
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.metrics = metrics or Metrics()
        self._listeners = tuple(listeners)  # told of every stage and step of the job generating or uploading
        self.child = child
        self._idle = asyncio.Event()
        self._idle.set()
        self.current: JobProgress | None = None
        self.gpu_memory_used_mb = 0  # the latest the GPU process reported (with its progress)
        self._lock = asyncio.Lock()
        self._gpu_free_at: float | None = None  # time.monotonic() when the GPU process last handed a job back

    # ------------------------------------------------------------ state

    @property
    def state(self) -> ChildState:
        """The GPU process's state (`gpu_child.handle`), but `busy` for the whole of a job, upload included."""
        if self._lock.locked() and self.child.state is ChildState.ready:
            return ChildState.busy
        return self.child.state

    @property
    def unhealthy_reason(self) -> str | None:
        return self.child.unhealthy_reason

    async def wait_ready(self) -> bool:
        """Wait out loading or a GPU-process restart: True once ready, False if it never will be."""
        return await self.child.wait_ready()

    async def drain(self, timeout_s: float) -> bool:
        """Let the running job finish within `timeout_s`; past it, stop it (reported failed/timeout, retryable)
        and give it CANCEL_GRACE_S to stop, then kill the GPU process. True once no job runs."""
        if await self._idle_within(timeout_s):
            return True
        current = self.current
        if current is not None:
            with job_context(current.job_id):
                log.warning("drain deadline reached; stopping the job", extra={"step": current.step})
            self.cancel(current.job_id, ErrorCode.timeout)
        if await self._idle_within(CANCEL_GRACE_S):
            return True
        log.error("the job did not stop after its cancel; killing the GPU process")
        await self.child.kill()
        return await self._idle_within(5.0)

    async def _idle_within(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load and warm the model in the GPU child; the state says how it went."""
        await self.child.start()
        if self.child.device is not None and self.child.state is ChildState.ready:
            self._record_gpu(self.child.device.memory_used_mb, self.child.device.memory_total_mb)

    async def close(self) -> None:
        await self.child.stop()

    async def kill(self) -> None:
        """Kill the GPU process now (Ctrl-C of a one-shot command: it ignores SIGINT by design)."""
        await self.child.kill()

    @property
    def ready(self) -> bool:
        return self.state is RunnerState.ready

    @property
    def device(self) -> DeviceInfo | None:
        return self.child.device

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def capabilities(self) -> Capabilities:
        """What a claim may ask of this worker."""
        return capabilities(self.settings, self.child.device)

    def cancel(self, job_id: str, reason: ErrorCode = ErrorCode.cancelled) -> bool:
        """Stop the running job at its next safe point; False if it is not running here."""
        if self.current is None or self.current.job_id != job_id:
            return False
        self.child.cancel(reason)
        return True

    def gpu_info(self) -> GpuInfo:
        """The card and its memory in use, as of the GPU process's latest report."""
        device = self.child.device
        if device is None:
            return GpuInfo()
        used = self.gpu_memory_used_mb or device.memory_used_mb
        return GpuInfo(name=device.name, memory_used_mb=used, memory_total_mb=device.memory_total_mb)

    # ------------------------------------------------------------ the job

    async def run(
        self,
        job_id: str,
        raw_input: Any,
        *,
        queued_s: float = 0.0,
        image_file: Path | None = None,
        target: OutputTarget | None = None,
    ) -> JobResult:
        """Run one job to a result, or raise JobFailure. Raises Busy / NotReady without starting it. The runner
        is busy until the upload is done (queue mode's /health); `generate` + `finish` free it earlier."""
        async with self._holding(job_id):
            generated = await self._generate_observed(job_id, raw_input, queued_s, image_file)
            generated.target = target
            return await self.finish(generated)

    async def generate(
        self, job_id: str, raw_input: Any, *, queued_s: float = 0.0, image_file: Path | None = None
    ) -> Generated:
        """The GPU's part of a job: validate, download the image, generate and encode the MP4. The runner is
        free again when it returns, so the next job may start while `finish` uploads this one (buffer mode's
        pipelining). Raises JobFailure, or Busy / NotReady without starting the job."""
        async with self._holding(job_id):
            return await self._generate_observed(job_id, raw_input, queued_s, image_file)

    async def finish(self, generated: Generated) -> JobResult:
        """The rest: hash and upload the MP4 (in a thread), then the result. Raises JobFailure."""
        with job_context(generated.job_id):
            try:
                result = await self._upload(generated)
            except JobFailure as exc:
                self._count_failure(exc)
                raise
            finally:
                await asyncio.to_thread(shutil.rmtree, generated.work, True)
            self.metrics.jobs.labels("completed", "").inc()
            self.metrics.job_seconds.observe(time.monotonic() - generated.started)
            log.info(
                "job completed",
                extra={"video_url": result.video_url.split("?")[0], "timings": result.timings.model_dump()},
            )
        return result

    @contextlib.asynccontextmanager
    async def _holding(self, job_id: str) -> AsyncIterator[None]:
        """The runner for one job: Busy if another holds it, NotReady while the GPU process is not ready."""
        if self._lock.locked():
            raise Busy(f"job {self.current.job_id if self.current else '?'} is running")
        async with self._lock:
            if self.child.state is not ChildState.ready:
                raise NotReady(self.child.unhealthy_reason or "the model is still loading")
            self.metrics.busy.set(1)
            self._idle.clear()
            try:
                with job_context(job_id):
                    yield
            finally:
                self.current = None
                self.metrics.busy.set(0)
                self._idle.set()

    def _count_failure(self, exc: JobFailure) -> None:
        self.metrics.jobs.labels("failed", exc.code.value).inc()
        log.warning("job failed", extra={"code": exc.code.value, "error": exc.message, "retryable": exc.retryable})

    async def _generate_observed(
        self, job_id: str, raw_input: Any, queued_s: float, image_file: Path | None
    ) -> Generated:
        """`image_file`: a local image (the one-shot CLI) instead of downloading `image_url`."""
        start = time.monotonic()
        self.metrics.queue_wait_seconds.observe(queued_s)
        self.current = progress = JobProgress(job_id)
        work = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=self._work_root()))
        try:
            job = parse_job_input(raw_input)
            mode = "i2v" if job.image_url or image_file else "t2v"
            check_capacity(self.settings, self.child.device, job, mode)
            seed = job.seed if job.seed is not None else secrets.randbelow(MAX_SEED)
            image_path, download_s = (str(image_file), 0.0) if image_file else await self._download(job, work)
            done = await self._generate(job_id, job, seed, work, image_path)
        except BaseException as exc:
            await asyncio.to_thread(shutil.rmtree, work, True)
            if isinstance(exc, JobFailure):
                self._count_failure(exc)
            raise
        log.info("video generated", extra={"inference_s": round(done.inference_s, 3)})
        return Generated(job_id, job, mode, work, done, download_s, queued_s, start, progress)

    async def _upload(self, generated: Generated) -> JobResult:
        self._set_stage(Stage.uploading, progress=generated.progress)
        upload_start = time.monotonic()
        video = Path(generated.done.out_path)
        digest, stored = await asyncio.to_thread(hash_and_upload, self.storage, video, generated)
        upload_s = time.monotonic() - upload_start
        observe_stages(self.metrics, generated, upload_s)
        return build_result(generated, digest, stored, upload_s)

    async def _download(self, job: JobInput, work: Path) -> tuple[str | None, float]:
        return await fetch_image(self.settings, job.image_url, work, lambda: self._set_stage(Stage.downloading))

    def _work_root(self) -> Path:
        root = self.settings.STATE_DIR / "work"
        root.mkdir(parents=True, exist_ok=True)
        return root

    async def _generate(self, job_id: str, job: JobInput, seed: int, work: Path, image_path: str | None) -> Done:
        out_path = str(work / f"{job_id}.mp4")
        request = RunJob(job_id=job_id, input=job.model_dump(), seed=seed, out_path=out_path, image_path=image_path)
        self._observe_gpu_idle()
        try:
            return await self.child.run(request, self._on_child_progress)
        except ChildJobFailure as exc:  # the child's own restart is its business; the job just failed
            raise JobFailure(exc.code, exc.message, exc.retryable) from None
        finally:
            self._gpu_free_at = time.monotonic()

    def _observe_gpu_idle(self) -> None:
        """How long the GPU process waited since it handed back its previous job (None for its first)."""
        idle_s = None if self._gpu_free_at is None else time.monotonic() - self._gpu_free_at
        if idle_s is not None:
            self.metrics.gpu_idle_seconds.observe(idle_s)
        log.info("generation started", extra={"gpu_idle_ms": None if idle_s is None else round(idle_s * 1000, 1)})

    # ------------------------------------------------------------ progress

    def _on_child_progress(self, msg: Progress) -> None:
        if msg.memory_used_mb:
            self._record_gpu(msg.memory_used_mb, None)
        self._set_stage(msg.stage, msg.step, msg.total_steps)

    def _set_stage(
        self, stage: Stage, step: int | None = None, total: int | None = None, *, progress: JobProgress | None = None
    ) -> None:
        """Advance the job generating now, or `progress`'s job (one uploading beside it)."""
        current = progress or self.current
        if current is None:
            return
        current.advance(stage, step, total)
        for listener in self._listeners:
            listener(current)

    def _record_gpu(self, used_mb: int, total_mb: int | None) -> None:
        self.gpu_memory_used_mb = used_mb
        self.metrics.gpu_memory_used.set(used_mb * 2**20)
        if total_mb is not None:
            self.metrics.gpu_memory_total.set(total_mb * 2**20)


class RunnerFactory(Protocol):
    """Builds a runner with the listeners its user gives it: `build_runner`, partly applied (a buffer slot's)."""

    def __call__(self, *, listeners: Sequence[ProgressListener]) -> JobRunner: ...


def build_runner(
    settings: Settings,
    storage: Storage,
    *,
    device: SlotDevice | None = None,
    listeners: Sequence[ProgressListener] = (),
    metrics: Metrics | None = None,
    spawn: Callable[[Settings], ChildProcess] | None = None,
    load_gate: asyncio.Semaphore | None = None,
) -> JobRunner:
    """A runner and its GPU process, which sees only `device` (a buffer slot's; None: the process's own view).
    Every mode and command builds its runner here; a test passes `spawn` to put a fake process behind it.
    `load_gate`, shared by a box's slots, bounds how many of their GPU processes load a model at once."""
    if spawn is None:
        spawn = functools.partial(ChildProcess, env=device.child_env() if device else None)
    child = GpuChild(settings, spawn=spawn, load_gate=load_gate)
    return JobRunner(settings, storage, child=child, metrics=metrics, listeners=listeners)
