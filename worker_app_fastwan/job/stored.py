"""What every storage shares (`storage.py`, `s3_storage.py`, `target_upload.py`): the `Storage` protocol, what
an upload returns, and the content-addressed keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from worker_app_fastwan.core.schema import ID_PATTERN

CONTENT_TYPE = "video/mp4"
POSTER_TYPE = "image/jpeg"


@dataclass(frozen=True)
class StoredObject:
    key: str
    url: str
    bytes: int
    poster_key: str | None = None
    poster_url: str | None = None


class StorageError(RuntimeError):
    """Storage could not be set up (bad credentials, missing bucket); the message holds no secrets."""


class Storage(Protocol):
    def upload(self, local_path: Path, job_id: str, sha256: str, poster: Path | None = None) -> StoredObject:
        """Store the file (whose SHA-256 is `sha256`) under its key, and the poster beside it, and return URLs
        a client can fetch; never consumes the files."""
        ...


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
