"""The job objects of the protocol (docs/protocol.md): input, result, error.

This module is the single definition used by queue mode, buffer mode, the job runner and the stub.
It imports nothing heavy so that every process can afford it.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

# 1-128 characters of [A-Za-z0-9._:-], and never "." or ".." (ids become path segments and storage keys).
# Spelled without look-ahead so the same pattern runs in pydantic's Rust regex engine, Python's `re` and
# JSON Schema (the OpenAPI documents, hence the fuzzers): one rule for the worker, the stub and its routes.
ID_PATTERN = (
    r"^(?:[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}"  # not starting with a dot
    r"|\.[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,126}"  # one dot, then not a dot
    r"|\.\.[A-Za-z0-9._:-]{1,126})$"  # two dots, then anything
)
ID_RULE = "1-128 characters of [A-Za-z0-9._:-], and not . or .."  # ID_PATTERN in words, for messages
JobId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
WorkerId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]

MAX_PROMPT_CHARS = 4000
# 128: the miniature model's world is 128x128 and up (docs/miniature.md); a GPU deployment may still refuse
# smaller jobs than it serves well (docs/protocol.md).
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 128, 1280, 32
MIN_FRAMES, MAX_FRAMES = 5, 241
MAX_SEED = 2**63
# FastWan was distilled for exactly 3 DMD steps ([1000, 757, 522]); 1-2 run a prefix of that schedule.
MIN_STEPS, MAX_STEPS = 1, 3


class Stage(str, Enum):
    """Where a job is; the order is the order a job passes through them."""

    queued = "queued"
    downloading = "downloading"
    encoding_prompt = "encoding_prompt"
    denoising = "denoising"
    decoding = "decoding"
    encoding_video = "encoding_video"
    uploading = "uploading"


class ErrorCode(str, Enum):
    invalid_input = "invalid_input"
    image_download_failed = "image_download_failed"
    out_of_memory = "out_of_memory"
    generation_failed = "generation_failed"
    upload_failed = "upload_failed"
    timeout = "timeout"
    cancelled = "cancelled"
    internal = "internal"


class JobInput(BaseModel):
    """The job input; unknown fields are ignored, every rule names its field when broken."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    image_url: str | None = Field(
        default=None,
        description="image-to-video (experimental: the 5B student was distilled on text-to-video only; "
        "an operator can switch it off with I2V_ENABLED=false)",
    )
    width: int = Field(default=1280, ge=MIN_SIDE, le=MAX_SIDE)
    height: int = Field(default=704, ge=MIN_SIDE, le=MAX_SIDE)
    num_frames: int = Field(default=121, ge=MIN_FRAMES, le=MAX_FRAMES)
    fps: int = Field(default=24, ge=1, le=60)
    seed: int | None = Field(default=None, ge=0, lt=MAX_SEED)
    num_inference_steps: int = Field(default=3, ge=MIN_STEPS, le=MAX_STEPS)

    @field_validator("prompt")
    @classmethod
    def _prompt_trimmed(cls, value: str) -> str:
        value = value.strip()
        if not 1 <= len(value) <= MAX_PROMPT_CHARS:
            raise ValueError(f"must be 1-{MAX_PROMPT_CHARS} characters after trimming (got {len(value)})")
        return value

    @field_validator("image_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        return value.strip()

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % SIDE_MULTIPLE:
            raise ValueError(f"must be a multiple of {SIDE_MULTIPLE} (got {value})")
        return value

    @field_validator("num_inference_steps", mode="wrap")
    @classmethod
    def _distilled_steps(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> int:
        """An out-of-range integer gets the reason, not just the bound."""
        try:
            return handler(value)
        except ValidationError:
            if isinstance(value, int) and not isinstance(value, bool):
                raise ValueError(
                    f"must be {MIN_STEPS}-{MAX_STEPS} (got {value}): FastWan is distilled for 3 steps "
                    "(timesteps 1000, 757, 522); 1-2 run the start of that schedule, more would leave it"
                ) from None
            raise

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int) -> int:
        if (value - 1) % 4:
            raise ValueError(f"must be 4k+1, e.g. 81 or 121 (got {value})")
        return value

    @property
    def mode(self) -> Literal["t2v", "i2v"]:
        return "i2v" if self.image_url else "t2v"


class Timings(BaseModel):
    queue_s: float = 0.0
    download_s: float = 0.0
    inference_s: float = 0.0
    encode_s: float = 0.0
    upload_s: float = 0.0
    total_s: float = 0.0


class JobResult(BaseModel):
    job_id: str
    status: Literal["completed"] = "completed"
    video_url: str
    storage_key: str
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int
    mode: Literal["t2v", "i2v"]
    bytes: int
    sha256: str
    timings: Timings
    # v1.2: a JPEG of a frame from the middle of the video, stored beside it (absent from v1.1 workers).
    poster_url: str | None = None
    poster_key: str | None = None


class JobError(BaseModel):
    code: ErrorCode
    message: str
    retryable: bool


# The keys are content-addressed (docs/protocol.md, "The result"): the worker stores under them and the
# orchestrator checks a result against them.
def storage_key(job_id: str, sha256: str, prefix: str) -> str:
    """`<prefix>videos/<job_id>/<sha256>.mp4`; both are checked because they become file names."""
    if not re.fullmatch(ID_PATTERN, job_id):
        raise ValueError(f"job_id {job_id!r} does not match {ID_PATTERN}")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return f"{prefix}videos/{job_id}/{sha256}.mp4"


def poster_key(video_key: str) -> str:
    """The poster's key: the video's, with `.jpg` for `.mp4`."""
    return video_key.removesuffix(".mp4") + ".jpg"
