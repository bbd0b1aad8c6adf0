"""Typed messages between the parent (HTTP, heartbeats, uploads) and the GPU child process.

They are small on purpose: the child writes the MP4 to disk and sends its path, never frames. Build them
with keywords; stages and error codes are the protocol's enums end to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.schema import ErrorCode, Stage


# parent -> child
@dataclass(frozen=True)
class RunJob:
    job_id: str
    input: dict[str, Any]
    seed: int
    out_path: str
    image_path: str | None = None


@dataclass(frozen=True)
class Shutdown:
    pass


# child -> parent
@dataclass(frozen=True)
class Ready:
    device: DeviceInfo
    load_s: float


@dataclass(frozen=True)
class Progress:
    job_id: str
    stage: Stage
    step: int | None = None
    total_steps: int | None = None
    memory_used_mb: int = 0


@dataclass(frozen=True)
class Done:
    job_id: str
    seed: int
    out_path: str
    frames: int
    inference_s: float
    encode_tail_s: float  # the encoder's flush after the last frame: what encoding adds to a job
    stage_s: dict[str, float] = field(default_factory=dict)
    poster_path: str | None = None  # the JPEG beside the MP4 (None: making it failed; the video stands)
    poster_s: float = 0.0


@dataclass(frozen=True)
class Failed:
    job_id: str | None
    code: ErrorCode
    message: str
    retryable: bool
    fatal: bool = False  # the child exits after sending it (CUDA context unusable, or the model failed to load)


# made by the parent's reader when the pipe closes
@dataclass(frozen=True)
class ChildExited:
    exitcode: int | None


ChildEvent = Ready | Progress | Done | Failed | ChildExited
