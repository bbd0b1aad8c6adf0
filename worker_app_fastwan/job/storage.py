"""Where finished videos go: a Backblaze B2 bucket (b2sdk), any S3-compatible bucket (`s3_storage.py`,
boto3), a local folder, or an orchestrator's presigned output target (`target_upload.py`), behind one
`Storage` protocol.

The object key is `<prefix>videos/<job_id>/<sha256>.mp4`: an attempt that lost its lease and finishes
late writes beside, never over, the video that another attempt reported, so a reported `storage_key`,
`bytes` and `sha256` always describe what is stored. The poster goes beside it, `<sha256>.jpg`. A local
video is fsynced, with its folders, before `upload` returns: it is reported `completed` only once durable.
`upload` blocks (b2sdk and boto3 are synchronous, fsync waits for the disk); the caller runs it in a thread.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from worker_app_fastwan.core.durable import fsync_dir, replace_durably
from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.job.stored import (
    CONTENT_TYPE,
    POSTER_TYPE,
    Storage,
    StorageError,
    StoredObject,
    poster_key,
    storage_key,
)

__all__ = ["CONTENT_TYPE", "POSTER_TYPE", "Storage", "StorageError", "StoredObject", "poster_key", "storage_key"]

if TYPE_CHECKING:
    from b2sdk.v2 import B2Api

    from worker_app_fastwan.core.settings import Settings

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class LocalStorage:
    """A folder on this machine; `file://` URLs, for local runs and tests."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)

    def __repr__(self) -> str:
        return f"LocalStorage(out_dir={str(self.out_dir)!r})"

    def upload(self, local_path: Path, job_id: str, sha256: str, poster: Path | None = None) -> StoredObject:
        key = storage_key(job_id, sha256, "")
        dest = self.out_dir / key
        new_dirs = [d for d in (dest.parent.parent, dest.parent) if not d.exists()]
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A reader never sees a half-written video; the rename, and any folder made for it, last only once
        # their folders are on disk too.
        if poster is not None:  # first: a reported video always has its poster
            _copy_durably(poster, self.out_dir / poster_key(key))
        _copy_durably(Path(local_path), dest)
        for folder in (d.parent for d in new_dirs):
            fsync_dir(folder)
        shown = poster_key(key) if poster is not None else None
        return StoredObject(
            key=key,
            url=dest.resolve().as_uri(),
            bytes=dest.stat().st_size,
            poster_key=shown,
            poster_url=(self.out_dir / shown).resolve().as_uri() if shown else None,
        )


def _copy_durably(src_path: Path, dest: Path) -> None:
    with open(src_path, "rb") as src:
        replace_durably(dest, lambda out: shutil.copyfileobj(src, out, 1 << 20))


def _is_transient(exc: BaseException) -> bool:
    """b2sdk already retries each request a few times; these are what is still worth another go."""
    # b2sdk is imported only when B2 is used: it adds ~0.4 s to the parent's start-up.
    from b2sdk.v2.exception import AlreadyFailed, B2Error, MaxRetriesExceeded

    if isinstance(exc, (MaxRetriesExceeded, AlreadyFailed)):
        return True
    return isinstance(exc, B2Error) and (exc.should_retry_upload() or exc.should_retry_http())


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    extra = {"attempt": state.attempt_number, "error": type(exc).__name__, "sleep_s": round(state.upcoming_sleep, 3)}
    log.warning("b2 call failed, retrying", extra=extra)


class B2Storage:
    """A B2 bucket. Holds a ready `B2Api`, never the application key itself."""

    def __init__(
        self,
        api: B2Api,
        bucket_name: str,
        *,
        prefix: str = "",
        url_ttl_s: int = 7 * 24 * 3600,
        attempts: int = 3,
        retry_wait_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> None:
        self._api = api
        # list_buckets, not get_bucket_by_name: the cached lookup returns a Bucket whose type_ is None.
        found = api.list_buckets(bucket_name=bucket_name)
        if not found:
            raise StorageError(f"B2_BUCKET_NAME: bucket {bucket_name!r} not found or not visible to this key")
        self._bucket = found[0]
        self.bucket_name = bucket_name
        self.prefix = prefix
        self.url_ttl_s = url_ttl_s
        self.public = self._bucket.type_ == "allPublic"
        self._retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_random_exponential(multiplier=retry_wait_s, max=retry_max_s),
            retry=retry_if_exception(_is_transient),
            before_sleep=_log_retry,
            reraise=True,
        )

    @classmethod
    def from_settings(cls, settings: Settings, api: B2Api | None = None) -> B2Storage:
        """Authorize with B2_KEY_ID / B2_APP_KEY; `api` lets tests pass one built on b2sdk's simulator."""
        from b2sdk.v2 import B2Api, InMemoryAccountInfo, InMemoryCache

        if not (settings.B2_KEY_ID and settings.B2_APP_KEY and settings.B2_BUCKET_NAME):
            raise StorageError("B2_KEY_ID: B2 storage needs B2_KEY_ID, B2_APP_KEY and B2_BUCKET_NAME")
        api = api or B2Api(InMemoryAccountInfo(), InMemoryCache())
        try:
            api.authorize_account(
                realm="production",
                application_key_id=settings.B2_KEY_ID,
                application_key=settings.B2_APP_KEY.get_secret_value(),
            )
            return cls(
                api,
                settings.B2_BUCKET_NAME,
                prefix=settings.B2_PREFIX,
                url_ttl_s=settings.B2_URL_TTL_S,
                retry_max_s=settings.RETRY_MAX_S,
            )
        except StorageError:
            raise
        except Exception as exc:  # b2sdk raises many types; the message names the key id, never the key
            what = f"{type(exc).__name__}: {exc}"
            raise StorageError(f"B2 set-up failed for key id {settings.B2_KEY_ID}: {what}") from None

    def __repr__(self) -> str:
        return f"B2Storage(bucket={self.bucket_name!r}, prefix={self.prefix!r}, public={self.public})"

    def upload(self, local_path: Path, job_id: str, sha256: str, poster: Path | None = None) -> StoredObject:
        key = storage_key(job_id, sha256, self.prefix)
        size = Path(local_path).stat().st_size
        shown = poster_key(key) if poster is not None else None
        try:
            if poster is not None:  # first: a reported video always has its poster
                self._call(
                    self._bucket.upload_local_file, local_file=str(poster), file_name=shown, content_type=POSTER_TYPE
                )
            # Files above the account's recommended part size go multipart inside b2sdk, which also
            # resumes a matching unfinished large file, so a retry here does not resend finished parts.
            self._call(
                self._bucket.upload_local_file,
                local_file=str(local_path),
                file_name=key,
                content_type=CONTENT_TYPE,
                file_info={"job_id": job_id, "sha256": sha256},
            )
            url = self._call(self._url_for, key)
            poster_url = self._call(self._url_for, shown) if shown else None
        except Exception as exc:
            raise JobFailure(
                ErrorCode.upload_failed,
                f"upload of {key} to B2 bucket {self.bucket_name} failed: {type(exc).__name__}",
                retryable=True,
            ) from exc
        log.info("uploaded video", extra={"key": key, "bytes": size, "bucket": self.bucket_name})
        return StoredObject(key=key, url=url, bytes=size, poster_key=shown, poster_url=poster_url)

    def _call(self, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        return self._retrying.copy()(fn, *args, **kwargs)

    def _url_for(self, key: str) -> str:
        url = self._api.get_download_url_for_file_name(self.bucket_name, key)
        if self.public:
            return url
        token = self._bucket.get_download_authorization(key, self.url_ttl_s)
        return f"{url}?Authorization={quote(token, safe='')}"


class TargetsOnly:
    """`STORAGE_BACKEND=presigned`: no storage credentials on this box; every video goes to the output target
    the orchestrator hands out with its job (protocol v1.2), and a job without one cannot be stored here."""

    def __repr__(self) -> str:
        return "TargetsOnly()"

    def upload(self, local_path: Path, job_id: str, sha256: str, poster: Path | None = None) -> StoredObject:
        raise JobFailure(
            ErrorCode.upload_failed,
            "this worker keeps no storage credentials (STORAGE_BACKEND=presigned) and the job came without an "
            "output target; its orchestrator must hand one out (protocol v1.2)",
            retryable=True,
        )


def make_storage(settings: Settings) -> Storage:
    """The storage `settings` select; B2 and S3 check their bucket over the network (StorageError)."""
    kind = settings.storage
    if kind == "b2":
        return B2Storage.from_settings(settings)
    if kind == "s3":
        from worker_app_fastwan.job.s3_storage import S3Storage

        return S3Storage.from_settings(settings)
    if kind == "presigned":
        return TargetsOnly()
    return LocalStorage(settings.LOCAL_OUTPUT_DIR)
