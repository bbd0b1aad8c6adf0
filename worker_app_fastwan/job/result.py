"""A generated job's second half, without the runner's state: hash and store the MP4, then the `JobResult`.

`Generated` is what `JobRunner.generate` hands over and `JobRunner.finish` takes back; the hashing and the
upload are blocking (run in a thread by the runner), and the result and its timings are plain data built
from them. Apart from `runner.py` so that the runner reads as its job path (hold, generate, finish) only.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from worker_app_fastwan.core.job_progress import JobProgress
from worker_app_fastwan.core.metrics import Metrics
from worker_app_fastwan.core.protocol import OutputTarget
from worker_app_fastwan.core.schema import JobInput, JobResult, Stage, Timings
from worker_app_fastwan.gpu_child.messages import Done
from worker_app_fastwan.job.storage import Storage, StoredObject
from worker_app_fastwan.job.target_upload import TargetStorage


@dataclass
class Generated:
    """A job whose MP4 is written (`done.out_path`, in `work`) and not uploaded yet."""

    job_id: str
    job: JobInput
    mode: str
    work: Path
    done: Done
    download_s: float
    queued_s: float
    started: float  # time.monotonic() when the job started
    progress: JobProgress
    target: OutputTarget | None = None  # v1.2: the orchestrator's output target for this attempt, if any

    @property
    def poster(self) -> Path | None:
        return Path(self.done.poster_path) if self.done.poster_path else None


def hash_and_upload(storage: Storage, video: Path, generated: Generated) -> tuple[str, StoredObject]:
    """The MP4's sha256 (it names the storage key) and where it and its poster were stored: in `storage`, or on
    the job's output target if the orchestrator gave one (v1.2). Blocking: call in a thread."""
    if generated.target is not None:
        storage = TargetStorage(generated.target)
    job_id, poster = generated.job_id, generated.poster
    digest = hashlib.sha256()
    with video.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    sha256 = digest.hexdigest()
    if poster is None:  # a storage written before posters (a test's fake) takes three arguments
        return sha256, storage.upload(video, job_id, sha256)
    return sha256, storage.upload(video, job_id, sha256, poster=poster)


def build_result(generated: Generated, digest: str, stored: StoredObject, upload_s: float) -> JobResult:
    """The job's result, its timings measured up to now (`total_s` includes the queue wait)."""
    done, job = generated.done, generated.job
    timings = Timings(
        queue_s=round(generated.queued_s, 3),
        download_s=round(generated.download_s, 3),
        inference_s=round(done.inference_s, 3),
        encode_s=round(done.encode_tail_s, 3),
        upload_s=round(upload_s, 3),
        total_s=round(generated.queued_s + time.monotonic() - generated.started, 3),
    )
    return JobResult(
        job_id=generated.job_id,
        video_url=stored.url,
        storage_key=stored.key,
        width=job.width,
        height=job.height,
        num_frames=done.frames,
        fps=job.fps,
        seed=done.seed,
        mode=generated.mode,
        bytes=stored.bytes,
        sha256=digest,
        timings=timings,
        poster_url=stored.poster_url,
        poster_key=stored.poster_key,
    )


def observe_stages(metrics: Metrics, generated: Generated, upload_s: float) -> None:
    """Each stage's seconds into `fastwan_stage_seconds`: the GPU child's, the download and the upload."""
    stage_s = {
        **generated.done.stage_s,
        Stage.downloading.value: generated.download_s,
        Stage.uploading.value: upload_s,
    }
    for stage, seconds in stage_s.items():
        if seconds:
            metrics.stage_seconds.labels(stage).observe(seconds)
