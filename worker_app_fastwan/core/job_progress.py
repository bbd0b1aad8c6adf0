"""Where a running job is: its stage, and one overall progress figure from 0 to 1 that never goes down."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from worker_app_fastwan.core.schema import Stage

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


@dataclass
class JobProgress:
    """What a mode shows of the running job (heartbeats, /health, progress reports)."""

    job_id: str
    stage: Stage = Stage.queued
    progress: float = 0.0
    step: int | None = None
    total_steps: int | None = None

    def advance(self, stage: Stage, step: int | None = None, total: int | None = None) -> None:
        value = STAGE_START[stage]
        if stage is Stage.denoising and step is not None and total:
            value += (STAGE_START[Stage.decoding] - value) * step / total
        self.stage, self.step, self.total_steps = stage, step, total
        self.progress = max(self.progress, round(value, 4))


ProgressListener = Callable[[JobProgress], None]
