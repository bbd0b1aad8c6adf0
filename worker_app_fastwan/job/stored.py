"""What every storage shares (`storage.py`, `s3_storage.py`, `target_upload.py`): the `Storage` protocol, what
an upload returns, and the content-addressed keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from worker_app_fastwan.core.schema import poster_key, storage_key

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


__all__ = ["CONTENT_TYPE", "POSTER_TYPE", "Storage", "StorageError", "StoredObject", "poster_key", "storage_key"]
