"""Request and response bodies of the worker <-> orchestrator calls (progress, claim, heartbeat, status).

Shared by the worker (sender) and orchestrator_stub (receiver). Receivers ignore unknown fields.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from worker_app_fastwan.core.schema import JobError, JobId, JobResult, Stage, WorkerId

WorkerState = Literal["starting", "idle", "busy", "draining"]
JobStatus = Literal["running", "completed", "failed"]
MAX_HELD_JOBS = 64  # job ids one heartbeat may name
MAX_ATTEMPT = 1_000_000  # far above any orchestrator's attempts, and far below SQLite's integer range
# v1.2: the attempt secret an orchestrator hands out with a claim (docs/protocol.md, "Attempt secret"): opaque,
# printable ASCII; 256 characters leave room for any token format and keep it far inside the 64 KiB body cap.
MAX_SECRET_CHARS = 256
AttemptSecret = Annotated[str, StringConstraints(pattern=r"^[!-~]+$", max_length=MAX_SECRET_CHARS)]
# v1.3 long-poll claims: a claim's wait, and the 204's headers (how long the orchestrator waited; a quarantine).
MAX_CLAIM_WAIT_S = 3600.0
WAIT_HEADER = "X-Claim-Wait-S"
QUARANTINE_HEADER = "X-Worker-Quarantined"
# Steps, sizes, megabytes: far above any real value, and never an OverflowError where SQLite stores them.
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ProgressUpdate(_Body):
    worker_id: str
    stage: Stage
    progress: float = Field(ge=0.0, le=1.0)
    step: Count | None = None
    total_steps: Count | None = None
    message: str = ""


class Capabilities(_Body):
    modes: list[Literal["t2v", "i2v"]] = ["t2v", "i2v"]
    max_width: Count = 1280
    max_height: Count = 1280
    max_frames: Count = 241
    # v1.2: this worker uploads to an output target when its claim carries one (absent: a v1.1 worker).
    output_target: bool = False


# A header an output target may ask for: an HTTP token for a name, printable ASCII for a value (no CR/LF).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,2000}")
MAX_TARGET_URL = 8192  # a presigned URL is ~1-2 KB; a session token makes it longer


class UploadTarget(_Body):
    """v1.2: where the worker PUTs one file, and what the orchestrator will call it (docs/protocol.md)."""

    method: Literal["PUT"] = "PUT"
    # A presigned URL is a bearer credential until it expires: kept out of reprs (and so out of logs).
    url: str = Field(max_length=MAX_TARGET_URL, repr=False)
    headers: dict[str, str] = Field(default_factory=dict, max_length=20, repr=False)
    storage_key: str = Field(min_length=1, max_length=1024)
    serve_url: str = Field(max_length=MAX_TARGET_URL)

    @field_validator("url", "serve_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ValueError("must be an http(s) URL with a host and no user:password")
        return value

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(text):
                raise ValueError(f"header {name[:100]!r}: a token for a name, printable ASCII for a value")
        return value


class OutputTarget(_Body):
    """v1.2: an attempt's output target: the MP4's upload, and the poster's (a worker that makes none skips it)."""

    video: UploadTarget
    poster: UploadTarget | None = None
    expires_at: str | None = Field(default=None, max_length=40)  # informative: when the upload URLs stop working


class ClaimRequest(_Body):
    worker_id: WorkerId
    gpu_class: str = "unknown"
    capabilities: Capabilities = Capabilities()
    # v1.2: this worker proves it holds an attempt (it sends the claim's `attempt_secret` back with every status
    # and heartbeat), so the orchestrator may hand one out. Absent (a v1.1 worker): no secret is handed out.
    wants_attempt_secret: bool = False
    # v1.3: when nothing fits, the orchestrator may hold the claim open up to this long and answer as soon as a
    # job comes (a long poll). 0 (and a v1.2 worker's absent field): answer at once. The orchestrator waits at
    # most its own bound and says how long it granted in the 204's `X-Claim-Wait-S`; an orchestrator without
    # the header did not wait, and the worker sleeps CLAIM_POLL_S as before.
    wait_s: float = Field(default=0.0, ge=0.0, le=MAX_CLAIM_WAIT_S, allow_inf_nan=False)


class ClaimedJob(_Body):
    job_id: JobId
    input: dict[str, Any]
    attempt: int = 1
    lease_seconds: float = 30
    # v1.2: proof of holding this attempt, to send back with its statuses and heartbeats; None from a v1.1
    # orchestrator (or one that hands none out), and then nothing is sent. Never logged, never shown (repr=False).
    attempt_secret: AttemptSecret | None = Field(default=None, repr=False)
    output: OutputTarget | None = None  # v1.2: where this attempt uploads (else the worker's own storage)


class ClaimResponse(_Body):
    job: ClaimedJob


class GpuInfo(_Body):
    name: str = "unknown"
    memory_used_mb: Count = 0
    memory_total_mb: Count = 0


class SlotInfo(_Body):
    """Which slot of a multi-GPU worker beats, and its own state (an extra field: receivers may ignore it).
    `out`: its GPU process failed for good; it takes no jobs while the other slots go on."""

    index: int = Field(default=0, ge=0, le=1024)
    device: str = Field(default="default", max_length=100)
    state: Literal["starting", "idle", "busy", "draining", "out"] = "idle"
    reason: str | None = Field(default=None, max_length=1000)


class HeartbeatRequest(_Body):
    gpu_class: str = "unknown"
    state: WorkerState
    job_id: JobId | None = None  # the job generating now
    stage: Stage | None = None
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    gpu: GpuInfo = GpuInfo()
    # v1.1: every job this worker holds (generating, uploading or reporting); each one's lease is renewed.
    job_ids: list[JobId] = Field(default_factory=list, max_length=MAX_HELD_JOBS)
    slot: SlotInfo | None = None
    # v1.2: the attempt secret of each named job that was claimed with one ({job_id: secret}).
    attempt_secrets: dict[JobId, AttemptSecret] = Field(default_factory=dict, max_length=MAX_HELD_JOBS + 1, repr=False)


class HeartbeatResponse(_Body):
    cancel_job_ids: list[str] = []


class StatusUpdate(_Body):
    worker_id: WorkerId
    status: JobStatus
    result: JobResult | None = None
    error: JobError | None = None
    # v1.1: the claim's attempt this report is about; None (a v1 worker) is judged by the holder alone.
    attempt: int | None = Field(default=None, ge=1, le=MAX_ATTEMPT)
    # v1.2: the claim's `attempt_secret`, when it came with one. Kept with the status in the outbox, so a final
    # status delivered after a restart still proves its attempt.
    attempt_secret: AttemptSecret | None = Field(default=None, repr=False)
