"""The stub's settings, read from the environment (and an optional `.env`) once, by the CLI.

Nothing reads the environment at import time: `load_settings()` is called by `cli.main()` and the
`StubSettings` object is passed down. A bad setting raises `StubSettingsError` with one line naming the
variable. The API key is a `SecretStr`, so it never shows in reprs or logs.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from orchestrator_stub.db.engine import is_postgres, mask_password
from worker_app_fastwan.core.schema import JobInput
from worker_app_fastwan.core.storage_settings import MAX_PRESIGN_S, STORAGE_SECRETS, StorageSettings

SECRETS = ("INTERNAL_API_KEY", "STUB_PASSWORD", "WEBHOOK_SECRET", *STORAGE_SECRETS)


# The job fields the page's form offers with a default (page.form_fields), and so STUB_FORM_DEFAULTS may set.
NUMERIC_FORM_FIELDS = ("width", "height", "num_frames", "fps", "num_inference_steps", "seed")
FORM_FIELDS = (*NUMERIC_FORM_FIELDS, "prompt")


class StubSettingsError(ValueError):
    """A bad or missing setting; str() is one line naming the variable."""


SECRET_PREFIX = "whsec_"
# Standard Webhooks: a secret SHOULD be 24 to 64 random bytes.
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64
MAKE_ONE = "make one with: echo whsec_$(openssl rand -base64 32)"


def webhook_key(secret: str) -> bytes:
    """The signing key of a WEBHOOK_SECRET: `whsec_` + base64 (Standard Webhooks' format) is that base64's
    bytes; any other value (a hex secret from before) is its own UTF-8 bytes, as its X-Stub-Signature HMAC key
    always was, so a receiver verifies with `Webhook(secret.encode())`. ValueError for a bad `whsec_` value."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode("utf-8")
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after {SECRET_PREFIX} is not base64 ({MAKE_ONE})") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"{SECRET_PREFIX} secrets hold {MIN_KEY_BYTES}-{MAX_KEY_BYTES} random bytes, this one {len(key)}"
            f" ({MAKE_ONE})"
        )
    return key


class StubSettings(StorageSettings):
    """The stub's own settings, and the workers' storage variables (`StorageSettings`): with S3 or B2
    credentials the stub hands out presigned output targets (`outputs.py`); `LOCAL_OUTPUT_DIR` is there too."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True)

    STUB_HOST: str = "127.0.0.1"
    STUB_PORT: int = Field(default=8080, ge=1, le=65535)
    # A SQLite file, or a PostgreSQL URL (postgresql://user:password@host:port/db) for several replicas.
    STUB_DB: str = "orchestrator_stub.sqlite3"
    DB_POOL_SIZE: int = Field(default=10, ge=1, le=1000)  # PostgreSQL connections per replica (and as many more)
    INTERNAL_API_KEY: SecretStr

    LEASE_SECONDS: float = Field(default=30.0, gt=0)
    LEASE_CHECK_S: float = Field(default=0.5, gt=0)
    MAX_ATTEMPTS: int = Field(default=3, ge=1)
    # A fleet (orchestrator_stub/README.md, "A fleet"): retry elsewhere, quarantine, long-poll claims.
    RETRY_ELSEWHERE_S: float = Field(default=30.0, ge=0)  # a failed attempt's worker is passed over this long
    QUARANTINE_AFTER_FAILURES: int = Field(default=3, ge=0)  # failed attempts in a row that quarantine (0: never)
    QUARANTINE_S: float = Field(default=600.0, gt=0)
    CLAIM_WAIT_MAX_S: float = Field(default=30.0, ge=0, le=300)  # the longest a claim may wait for a job (0: none)

    WEBHOOK_MAX_ATTEMPTS: int = Field(default=5, ge=1)
    WEBHOOK_BASE_DELAY_S: float = Field(default=1.0, ge=0)
    WEBHOOK_MAX_DELAY_S: float = Field(default=60.0, ge=0)
    WEBHOOK_TIMEOUT_S: float = Field(default=10.0, gt=0)
    WEBHOOK_SCAN_S: float = Field(default=2.0, gt=0)
    WEBHOOK_SECRET: SecretStr | None = None
    WEBHOOK_ALLOW_PRIVATE: bool = False
    WEBHOOK_PROGRESS_S: float = Field(default=10.0, ge=0)  # job.progress webhooks: at most one per job this often

    # Event streams (streams.py): keep-alive, slow readers, how many, and how long the log keeps finished jobs.
    STREAM_PING_S: float = Field(default=15.0, gt=0, le=15)
    STREAM_SEND_TIMEOUT_S: float = Field(default=30.0, gt=0)
    STREAMS_PER_CLIENT: int = Field(default=32, ge=1)
    STREAMS_MAX: int = Field(default=2000, ge=1)
    EVENT_RETENTION_S: float = Field(default=7 * 24 * 3600.0, gt=0)

    DISPATCH_TO: str | None = None
    DISPATCH_MAX_ATTEMPTS: int = Field(default=4, ge=1)
    DISPATCH_RETRY_BASE_S: float = Field(default=1.0, ge=0)
    DISPATCH_RETRY_MAX_S: float = Field(default=30.0, ge=0)
    DISPATCH_TIMEOUT_S: float = Field(default=1800.0, gt=0)
    DISPATCH_POLL_S: float = Field(default=1.0, gt=0)

    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    LOG_FORMAT: Literal["auto", "json", "text"] = "json"

    # The page (orchestrator_stub/page.py and friends).
    STUB_PASSWORD: SecretStr | None = None
    STUB_PUBLIC_URL: str | None = None
    UPLOAD_DIR: Path = Path("stub_uploads")
    UPLOAD_MAX_BYTES: int = Field(default=20 * 1024 * 1024, ge=1)
    # v1.2 output targets: how long a target's upload URLs work. An attempt uploads after it generated (up to
    # the worker's JOB_TIMEOUT_S, 900 s) and maybe after waiting for the job before it (pipelining).
    OUTPUT_TARGET_TTL_S: int = Field(default=3600, ge=60, le=MAX_PRESIGN_S)

    @model_validator(mode="after")
    def _storage(self) -> StubSettings:
        problems = self.storage_problems()
        if self.STORAGE_BACKEND == "presigned":
            problems.insert(0, "STORAGE_BACKEND: presigned is a worker's setting; the stub takes b2, s3, local or auto")
        if problems:
            raise ValueError(problems[0])
        return self

    # Limits against strangers (orchestrator_stub/README.md, "Hardening"): every one bounds memory, disk or time.
    STUB_ALLOWED_HOSTS: str = ""  # more Host names the page and /v1 answer to, besides loopback and STUB_PUBLIC_URL's
    # The page's form starts with these instead of the API's defaults (JSON: width, height, num_frames, fps,
    # num_inference_steps, seed, prompt); `make studio` sets the miniature's world. The API's defaults stay.
    STUB_FORM_DEFAULTS: Annotated[dict[str, int | str], NoDecode] = Field(default_factory=dict)
    STUB_API_DOCS: bool = False  # /docs and /redoc load their scripts from a CDN: off unless asked for
    STORAGE_ORIGINS: str = "https://*.backblazeb2.com"  # where a result's video_url may point, besides the stub
    STORAGE_PREFIX: str = Field(default="", max_length=200)  # the workers' B2_PREFIX: storage keys start with it
    ATTEMPT_SECRET_REQUIRED: bool = False  # refuse claims from workers that cannot prove they hold an attempt
    WORKER_RETENTION_S: float = Field(default=24 * 3600.0, gt=0)
    MAX_WORKERS: int = Field(default=1000, ge=1)
    MAX_QUEUED_JOBS: int = Field(default=1000, ge=1)
    UPLOAD_TOTAL_MAX_BYTES: int = Field(default=2 * 1024**3, ge=1)
    UPLOAD_CLIENT_MAX_BYTES: int = Field(default=500 * 1024**2, ge=1)
    UPLOAD_QUOTA_WINDOW_S: float = Field(default=3600.0, gt=0)
    UPLOAD_MAX_CONCURRENT: int = Field(default=4, ge=1)
    UPLOAD_TIMEOUT_S: float = Field(default=60.0, gt=0)
    BODY_TIMEOUT_S: float = Field(default=30.0, gt=0)
    AUTH_FREE_FAILURES: int = Field(default=5, ge=0)
    AUTH_MAX_DELAY_S: float = Field(default=300.0, gt=0)

    @field_validator("INTERNAL_API_KEY")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("STUB_DB", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @field_validator("STUB_DB")
    @classmethod
    def _database(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a SQLite file path or a postgresql:// URL")
        if is_postgres(value):
            try:
                url = make_url(value.replace("postgres://", "postgresql://", 1))
            except (ArgumentError, ValueError):
                raise ValueError("not a PostgreSQL URL (postgresql://user:password@host:port/db)") from None
            if not url.database:
                raise ValueError("the PostgreSQL URL names no database (postgresql://user:password@host:port/db)")
        return value

    @field_validator("STORAGE_ORIGINS")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",") if o.strip()):
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
                raise ValueError(f"{origin!r} is not an origin such as https://f003.backblazeb2.com")
        return value

    @field_validator("STUB_PASSWORD", "WEBHOOK_SECRET")
    @classmethod
    def _blank_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # `STUB_PASSWORD=` in a .env template means "no password", not "the empty password" (same for secrets).
        return value if value is not None and value.get_secret_value() else None

    @field_validator("WEBHOOK_SECRET")
    @classmethod
    def _standard_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().startswith(SECRET_PREFIX):
            webhook_key(value.get_secret_value())  # raises ValueError with the one-line reason
        return value

    @field_validator("STUB_PUBLIC_URL")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
            raise ValueError("must be an http(s) URL, e.g. http://stub:8080")
        return value.rstrip("/") if value else None

    @field_validator("STORAGE_PREFIX")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if value and (not re.fullmatch(r"[A-Za-z0-9._/-]+", value) or ".." in value.split("/") or value[0] == "/"):
            raise ValueError("must be a relative key prefix of [A-Za-z0-9._/-], e.g. fastwan/")
        return value

    @field_validator("STUB_FORM_DEFAULTS", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value or "{}")
            except ValueError:
                raise ValueError('not JSON; e.g. {"width": 128, "height": 128, "num_frames": 17}') from None
        return value

    @field_validator("STUB_FORM_DEFAULTS")
    @classmethod
    def _form_defaults(cls, value: dict[str, int | str]) -> dict[str, int | str]:
        unknown = sorted(set(value) - set(FORM_FIELDS))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a form field (one of {', '.join(FORM_FIELDS)})")
        try:  # what the form starts with must be a job the API takes
            JobInput.model_validate({"prompt": "x", **value})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        return value

    @field_validator("DISPATCH_TO")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
            raise ValueError("must be an http(s) URL, e.g. http://localhost:8000/generate")
        return value or None

    def api_key(self) -> str:
        return self.INTERNAL_API_KEY.get_secret_value()

    def password(self) -> str | None:
        return self.STUB_PASSWORD.get_secret_value() if self.STUB_PASSWORD else None

    def webhook_key(self) -> bytes | None:
        """The key Standard Webhooks signatures are made with (`webhook_key`), or None without a secret."""
        return webhook_key(self.WEBHOOK_SECRET.get_secret_value()) if self.WEBHOOK_SECRET else None

    def public_url(self) -> str:
        """Where workers reach this stub (upload URLs start with it): STUB_PUBLIC_URL, else this host and port."""
        if self.STUB_PUBLIC_URL:
            return self.STUB_PUBLIC_URL
        host = "127.0.0.1" if self.STUB_HOST in ("", "0.0.0.0", "::") else self.STUB_HOST
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.STUB_PORT}"

    def allowed_hosts(self) -> frozenset[str]:
        """Host names the browser-facing routes answer to: loopback, STUB_PUBLIC_URL's host, STUB_ALLOWED_HOSTS."""
        hosts = {"localhost", "127.0.0.1", "::1", urlsplit(self.public_url()).hostname or ""}
        if self.STUB_HOST not in ("", "0.0.0.0", "::"):
            hosts.add(self.STUB_HOST.strip("[]"))
        hosts.update(h.strip().lower().strip("[]") for h in self.STUB_ALLOWED_HOSTS.split(",") if h.strip())
        return frozenset(h.lower() for h in hosts if h)

    def storage_origins(self) -> tuple[str, ...]:
        """STORAGE_ORIGINS as a list (`https://host[:port]`, `*.` for any subdomain)."""
        return tuple(o.strip().rstrip("/").lower() for o in self.STORAGE_ORIGINS.split(",") if o.strip())

    def summary(self) -> dict[str, object]:
        """What start-up logs: every setting, the keys masked, and the database URL without its password."""
        shown = {
            key: ("***" if isinstance(value, SecretStr) else str(value) if isinstance(value, Path) else value)
            for key, value in self.model_dump().items()
        }
        return shown | {"STUB_DB": mask_password(self.STUB_DB)}


def load_settings(env_file: str | None = ".env", **overrides: Any) -> StubSettings:
    """Read the settings once; a bad one becomes a `StubSettingsError` naming the variable."""
    try:
        return StubSettings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            hint = " (the key workers send in X-Internal-Api-Key)" if name == "INTERNAL_API_KEY" else ""
            raise StubSettingsError(f"{name} is required{hint}") from None
        msg = err["msg"].removeprefix("Value error, ")
        if not name:  # the storage rules: the line names its variable first
            raise StubSettingsError(f"invalid setting {msg}") from None
        given = err.get("input")
        shown = "" if name in SECRETS else f" (got {mask_password(given) if name == 'STUB_DB' else given!r})"
        raise StubSettingsError(f"invalid setting {name}: {msg}{shown}") from None
