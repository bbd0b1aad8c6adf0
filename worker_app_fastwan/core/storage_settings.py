"""Where videos are stored, as settings: one definition read by the worker (`core/settings.py`) and by the
stub (`orchestrator_stub/settings.py`), which issues presigned upload targets with the same variables.

`STORAGE_BACKEND` picks B2 (b2sdk), any S3-compatible store (boto3: AWS S3, Cloudflare R2, B2's S3 endpoint,
MinIO), a local folder, or, on a worker only, `presigned`: no storage credentials at all, every video goes to
the output target its orchestrator hands out with the job (docs/protocol.md, v1.2). The S3 credentials,
region and endpoint are the standard AWS variables, read here once and passed to boto3 explicitly; a variable
left unset leaves boto3 its own default (an instance role, `~/.aws/config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

B2_VARS = ("B2_KEY_ID", "B2_APP_KEY", "B2_BUCKET_NAME")
AWS_KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
STORAGE_SECRETS = ("B2_APP_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# SigV4's longest presigned URL: 7 days.
MAX_PRESIGN_S = 7 * 24 * 3600
StorageKind = Literal["b2", "s3", "local", "presigned"]


class StorageSettings(BaseSettings):
    """The storage variables; `storage` says which backend they select."""

    STORAGE_BACKEND: Literal["auto", "b2", "s3", "local", "presigned"] = "auto"
    B2_KEY_ID: str | None = None
    B2_APP_KEY: SecretStr | None = None
    B2_BUCKET_NAME: str | None = None
    B2_PREFIX: str = ""
    B2_URL_TTL_S: int = Field(default=7 * 24 * 3600, ge=1, le=7 * 24 * 3600)
    S3_BUCKET: str | None = None
    S3_PREFIX: str = ""
    # A presigned GET's lifetime, unless S3_PUBLIC_BASE_URL (a public bucket, a CDN) makes URLs of their own.
    S3_URL_TTL_S: int = Field(default=MAX_PRESIGN_S, ge=1, le=MAX_PRESIGN_S)
    S3_PUBLIC_BASE_URL: str | None = None
    # `path` for MinIO and most self-hosted stores; `auto` lets boto3 choose (virtual hosts on AWS).
    S3_ADDRESSING_STYLE: Literal["auto", "path", "virtual"] = "auto"
    AWS_ACCESS_KEY_ID: str | None = None
    AWS_SECRET_ACCESS_KEY: SecretStr | None = None
    AWS_SESSION_TOKEN: SecretStr | None = None
    AWS_REGION: str | None = None
    AWS_DEFAULT_REGION: str | None = None
    AWS_ENDPOINT_URL_S3: str | None = None
    AWS_ENDPOINT_URL: str | None = None
    LOCAL_OUTPUT_DIR: Path = Path("outputs")

    @property
    def storage(self) -> StorageKind:
        """`auto`: B2 when its credentials are set, else S3 when S3_BUCKET is, else the local folder."""
        if self.STORAGE_BACKEND != "auto":
            return self.STORAGE_BACKEND
        if self.B2_KEY_ID:
            return "b2"
        return "s3" if self.S3_BUCKET else "local"

    @property
    def s3_endpoint(self) -> str | None:
        """The S3 endpoint as the AWS tools read it: the S3-specific variable first, then the general one."""
        return self.AWS_ENDPOINT_URL_S3 or self.AWS_ENDPOINT_URL or None

    @property
    def s3_region(self) -> str | None:
        return self.AWS_REGION or self.AWS_DEFAULT_REGION or None

    def storage_problems(self) -> list[str]:
        """Storage settings that are fine one by one but not together; each line names its variable first."""
        problems = []
        b2_set = [name for name in B2_VARS if getattr(self, name)]
        if b2_set and len(b2_set) < len(B2_VARS):
            problems += [
                f"{name}: is required because {' '.join(b2_set)} is set (B2 needs all of {' '.join(B2_VARS)})"
                for name in B2_VARS
                if name not in b2_set
            ]
        elif self.STORAGE_BACKEND == "b2" and not b2_set:
            problems += [f"{name}: is required because STORAGE_BACKEND=b2" for name in B2_VARS]
        if self.STORAGE_BACKEND == "auto" and self.B2_KEY_ID and self.S3_BUCKET:
            problems.append("STORAGE_BACKEND: both B2_KEY_ID and S3_BUCKET are set; set STORAGE_BACKEND=b2 or s3")
        if self.storage == "s3":
            if not self.S3_BUCKET:
                problems.append("S3_BUCKET: is required because STORAGE_BACKEND=s3")
            keys_set = [name for name in AWS_KEY_VARS if getattr(self, name)]
            if len(keys_set) == 1:
                missing = next(name for name in AWS_KEY_VARS if name not in keys_set)
                problems.append(f"{missing}: is required because {keys_set[0]} is set")
        for name in ("S3_PUBLIC_BASE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            value = getattr(self, name)
            if value and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
                problems.append(f"{name}: must be an http(s) URL with a host")
        problems += [
            f"{name}: must not start with / (keys are relative to the bucket)"
            for name in ("S3_PREFIX", "B2_PREFIX")
            if getattr(self, name).startswith("/")
        ]
        return problems
