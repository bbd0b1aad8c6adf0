"""All worker settings, read from the environment (and an optional `.env`) in one place.

Nothing reads the environment at import time: `load_settings()` is called once by the CLI and the
resulting `Settings` object is passed down. A bad setting raises `SettingsError` with one line that
names the variable; secrets are `SecretStr`, so they never show in reprs or logs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from worker_app_fastwan.core.devices import parse_gpu_devices
from worker_app_fastwan.core.schema import ID_PATTERN, ID_RULE
from worker_app_fastwan.core.storage_settings import STORAGE_SECRETS, StorageSettings

HIDDEN_VALUES = (*STORAGE_SECRETS, "INTERNAL_API_KEY", "ORCHESTRATOR_BASE_URL")
# The name the model hub's FastWan collection lists (DMD with full attention); the other published name,
# FastVideo/FastWan2.2-TI2V-5B-Diffusers, is the first upload of the same model and works as well.
DEFAULT_MODEL_ID = "FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers"


class SettingsError(ValueError):
    """A bad or contradictory setting; str() is one line naming the variable."""


class Settings(StorageSettings):
    """Every worker setting; the storage variables are `StorageSettings`' (shared with the stub)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True, populate_by_name=True
    )

    WORKER_MODE: Literal["queue", "buffer"] = "queue"
    PORT: int = Field(default=8000, ge=1, le=65535)
    HOST: str = "0.0.0.0"

    ORCHESTRATOR_BASE_URL: str | None = None
    INTERNAL_API_KEY: SecretStr | None = None

    BUFFER_WORKER_ID: str | None = None
    GPU_CLASS: str | None = None
    STATE_DIR: Path = Field(default_factory=lambda: Path.home() / ".local" / "state" / "fastwan-worker")

    PIPELINE_BACKEND: Literal["diffusers", "fastvideo", "tiny"] = "diffusers"
    MODEL_ID: str = DEFAULT_MODEL_ID
    MODEL_PATH: Path | None = None
    OFFLOAD_PROFILE: Literal["auto", "none", "balanced", "low_vram"] = "auto"
    TORCH_COMPILE: bool = False
    # Where torch.compile keeps what it compiled (Inductor's and Triton's caches), so that a restarted
    # container does not compile again; unset: `torch-compile` under HF_HOME, the model volume.
    COMPILE_CACHE_DIR: Path | None = None
    # cuDNN's autotuning of the VAE's convolutions (off: its heuristics pick; see pipelines/tuning.py).
    CUDNN_BENCHMARK: bool = False
    # The VAE decoder's dtype on CUDA; the encoder (image-to-video) always runs in float32.
    VAE_DTYPE: Literal["float32", "bfloat16"] = "bfloat16"
    # The diffusers and fastvideo backends refuse to start without a CUDA device (a 5B model on the CPU
    # takes hours per video) unless this insists.
    ALLOW_CPU_INFERENCE: bool = False
    # Image-to-video is experimental (the 5B student was distilled on text-to-video only): off, claims
    # advertise t2v only and a job with an image is refused with invalid_input.
    I2V_ENABLED: bool = True
    ENCODER: Literal["auto", "libx264", "h264_nvenc"] = "auto"
    ENCODER_PRESET: str = "superfast"
    ENCODER_CRF: int = Field(default=27, ge=0, le=51)

    HEARTBEAT_INTERVAL_S: float = Field(default=5.0, gt=0)
    CLAIM_POLL_S: float = Field(default=1.5, gt=0)
    # Buffer mode: how long a claim asks the orchestrator to wait for a job when none is queued (protocol v1.3's
    # long poll: the job starts the moment it is submitted). 0, or an orchestrator that does not wait: poll
    # every CLAIM_POLL_S instead. Kept under the idle timeout of any proxy in between (often 60 s).
    CLAIM_WAIT_S: float = Field(default=20.0, ge=0, le=300)
    PROGRESS_MIN_INTERVAL_S: float = Field(default=1.0, ge=0)
    JOB_TIMEOUT_S: float = Field(default=900.0, gt=0)
    DRAIN_TIMEOUT_S: float = Field(default=120.0, ge=0)
    RETRY_MAX_S: float = Field(default=60.0, gt=0)
    # Buffer mode: on SIGTERM, how long final statuses still waiting may take to be delivered before the
    # worker exits anyway (they stay in STATE_DIR/outbox and go out at the next start).
    OUTBOX_FLUSH_TIMEOUT_S: float = Field(default=30.0, ge=0)
    # Buffer mode "burst" runs (tests, `make demo`, one-off batches), like arq's burst mode: exit 0 once
    # BUFFER_MAX_JOBS jobs are done (0: no limit), or at the first empty claim when BUFFER_EXIT_WHEN_IDLE.
    BUFFER_MAX_JOBS: int = Field(default=0, ge=0)
    BUFFER_EXIT_WHEN_IDLE: bool = False
    # Buffer mode: one slot (GPU process, claim loop, heartbeat) per device; see devices.py.
    GPU_DEVICES: str = "auto"
    # Buffer mode: how many slots may load their model at once (each reads ≈ 25.5 GiB through host memory).
    SLOT_LOAD_CONCURRENCY: int = Field(default=1, ge=1, le=16)
    # Buffer mode: claim and start the next job while the last one uploads and reports (two jobs held at most).
    BUFFER_PIPELINING: bool = True
    # Buffer mode: Prometheus metrics of every slot on HOST:METRICS_PORT (0: off). Queue mode has /metrics.
    METRICS_PORT: int = Field(default=0, ge=0, le=65535)

    ALLOW_PRIVATE_IMAGE_URLS: bool = False
    MAX_IMAGE_BYTES: int = Field(default=20 * 1024 * 1024, gt=0)
    IMAGE_TIMEOUT_S: float = Field(default=20.0, gt=0)

    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    LOG_FORMAT: Literal["auto", "json", "text"] = "auto"

    @field_validator("BUFFER_WORKER_ID")
    @classmethod
    def _an_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(ID_PATTERN, value):
            raise ValueError(f"must be {ID_RULE}")
        return value

    @field_validator("GPU_DEVICES")
    @classmethod
    def _devices(cls, value: str) -> str:
        parse_gpu_devices(value)
        return value.strip()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = self._conflicts()
        if problems:  # every one, a line each, so that one check names them all
            raise ValueError("\n".join(problems))
        return self

    def _conflicts(self) -> list[str]:
        """Settings that are fine one by one but not together; each line starts with the variable's name."""
        problems = self.storage_problems()
        if self.ORCHESTRATOR_BASE_URL and not self.ORCHESTRATOR_BASE_URL.startswith(("http://", "https://")):
            problems.append("ORCHESTRATOR_BASE_URL: must start with http:// or https://")
        if self.ORCHESTRATOR_BASE_URL and not self.INTERNAL_API_KEY:
            problems.append("INTERNAL_API_KEY: is required when ORCHESTRATOR_BASE_URL is set")
        if self.MODEL_PATH is not None and not self.MODEL_PATH.is_dir():
            problems.append(f"MODEL_PATH: {self.MODEL_PATH} is not a folder")
        return problems

    def mode_problems(self, mode: str) -> list[str]:
        """What `mode` needs beyond the settings' own rules: buffer mode claims from an orchestrator."""
        if mode != "buffer":
            return []
        needed = {"ORCHESTRATOR_BASE_URL": self.ORCHESTRATOR_BASE_URL, "INTERNAL_API_KEY": self.INTERNAL_API_KEY}
        return [f"{name}: is required in buffer mode" for name, value in needed.items() if not value]

    @property
    def orchestrator_url(self) -> str | None:
        return self.ORCHESTRATOR_BASE_URL.rstrip("/") if self.ORCHESTRATOR_BASE_URL else None

    def api_key(self) -> str:
        return self.INTERNAL_API_KEY.get_secret_value() if self.INTERNAL_API_KEY else ""

    def require_orchestrator(self) -> None:
        """Buffer mode cannot run without an orchestrator to claim from."""
        problems = self.mode_problems("buffer")
        if problems:
            raise SettingsError(problems[0])

    def summary(self) -> dict[str, object]:
        """What start-up logs: every setting, secrets masked (and a URL's user:password)."""
        shown = {
            key: ("***" if isinstance(value, SecretStr) else str(value) if isinstance(value, Path) else value)
            for key, value in self.model_dump().items()
            if value is not None
        }
        if self.ORCHESTRATOR_BASE_URL:
            shown["ORCHESTRATOR_BASE_URL"] = mask_userinfo(self.ORCHESTRATOR_BASE_URL)
        return shown


def mask_userinfo(url: str) -> str:
    """`url` for logs and reprs: any `user:password@` becomes `***@` and a query `?***` (a token may ride in
    either)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1])
    if parts.query:
        parts = parts._replace(query="***")
    return urlunsplit(parts)


def load_settings(env_file: str | None = ".env", **overrides: Any) -> Settings:
    """Read the settings once; a bad one becomes a `SettingsError` naming the variable."""
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        raise SettingsError(f"invalid setting {describe_problems(exc)[0]}") from None


def settings_problems(mode: str | None = None, env_file: str | None = ".env") -> list[str]:
    """Every problem with the settings for `mode` (default: WORKER_MODE), one line each naming its variable.

    The one check of the environment: `check-settings` (the container's entrypoint) and every command use it.
    """
    try:
        settings = Settings(_env_file=env_file)
    except ValidationError as exc:
        return describe_problems(exc)
    return settings.mode_problems(mode or settings.WORKER_MODE)


def describe_problems(exc: ValidationError) -> list[str]:
    """One line per problem, each starting with the variable's name; values of secrets (and of the orchestrator
    URL, which may carry a password) are never shown."""
    lines: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # the model validator: its own lines, each naming its variable first
            lines += msg.splitlines()
            continue
        got = err.get("input")
        hidden = loc in HIDDEN_VALUES or isinstance(got, dict)
        lines.append(f"{loc}: {msg}" + ("" if hidden else f" (got {got!r})"))
    return lines
