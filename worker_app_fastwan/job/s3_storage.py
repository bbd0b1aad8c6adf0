"""Videos in any S3-compatible bucket through boto3: AWS S3, Cloudflare R2, Backblaze B2's S3 endpoint, MinIO.

The same guarantees as the B2 backend (`storage.py`):
- the key is content-addressed, `<S3_PREFIX>videos/<job_id>/<sha256>.mp4`, the poster beside it;
- the store verifies every byte: a single PUT carries the file's SHA-256 (`x-amz-checksum-sha256`), each part
  of a multipart upload its own, and the store refuses a body that does not match (`BadDigest`);
- files from `multipart_threshold` up go in parts, several at a time; a failed upload is tried again
  (`attempts`), and the next try resumes the unfinished multipart upload of the same key, sending only the
  parts the store does not hold yet (the key names the content, so its parts are this file's);
- the URL returned works: `S3_PUBLIC_BASE_URL` + key (a public bucket, a CDN), else a presigned GET that
  lasts `S3_URL_TTL_S`;
- every failure ends as `upload_failed`, retryable unless retrying cannot help (`_permanent`).

It never checks the bucket's listing: a least-privilege key may only write under its prefix. `doctor` writes
and deletes a probe object instead. Blocking (boto3 is synchronous): the runner calls it in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.job.stored import (
    CONTENT_TYPE,
    POSTER_TYPE,
    StorageError,
    StoredObject,
    poster_key,
    storage_key,
)

if TYPE_CHECKING:
    from worker_app_fastwan.core.storage_settings import StorageSettings

log = logging.getLogger(__name__)

MIB = 1 << 20
# Parts of 8 MiB from 16 MiB up: a 1280x704x121 video (~5-20 MB) goes in one PUT or two to three parts. S3's
# smallest part is 5 MiB; at 8 MiB a 10,000-part upload could hold 80 GB, far beyond any video here.
MULTIPART_THRESHOLD = 16 * MIB
PART_SIZE = 8 * MIB
# Failures that another try of the same job cannot mend (its video is too large, its key too long for the
# store); everything else (network, 5xx, throttling, a refused key, a missing bucket, a digest that did not
# match in transit) may pass on another try or another worker.
PERMANENT_CODES = frozenset({"EntityTooLarge", "KeyTooLongError", "InvalidArgument"})
# What is worth another go at once, inside this upload (botocore already retried each request).
TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"})


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _status(exc: BaseException) -> tuple[str, int | None]:
    """(error code, HTTP status) of a botocore error; ("", None) for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", None
    code = str(response.get("Error", {}).get("Code", ""))
    return code, response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _transient(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code, status = _status(exc)
        return code in TRANSIENT_CODES or (status or 0) >= 500
    return isinstance(exc, BotoCoreError)  # connection refused or reset, timeouts


def _permanent(exc: BaseException) -> bool:
    code, status = _status(exc)
    return code in PERMANENT_CODES and status is not None and 400 <= status < 500


def describe(exc: BaseException) -> str:
    """The error in one line, without a URL's query or any credential: `SignatureDoesNotMatch (HTTP 403)`."""
    code, status = _status(exc)
    if code:
        return f"{code} (HTTP {status})" if status else code
    return type(exc).__name__


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    extra = {"attempt": state.attempt_number, "error": describe(exc) if exc else None}
    log.warning("s3 upload failed, trying again", extra=extra | {"sleep_s": round(state.upcoming_sleep, 3)})


class S3Storage:
    """A bucket of an S3-compatible store. Holds a ready boto3 client, never the secret key itself."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str = "",
        url_ttl_s: int = 7 * 24 * 3600,
        public_base_url: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        max_parallel_parts: int = 4,
        attempts: int = 3,
        retry_wait_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.url_ttl_s = url_ttl_s
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.max_parallel_parts = max_parallel_parts
        self._retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_random_exponential(multiplier=retry_wait_s, max=retry_max_s),
            retry=retry_if_exception(_transient),
            before_sleep=_log_retry,
            reraise=True,
        )

    @classmethod
    def from_settings(cls, settings: StorageSettings, client: Any = None, **options: Any) -> S3Storage:
        """S3_BUCKET, S3_PREFIX and the AWS_* variables; `client` lets tests and the bench bring their own."""
        from worker_app_fastwan.core.s3_client import s3_client

        if not settings.S3_BUCKET:
            raise StorageError("S3_BUCKET: S3 storage needs a bucket")
        try:
            client = client or s3_client(settings)
        except Exception as exc:  # a bad region or endpoint: the message names no secret (none was sent)
            raise StorageError(f"S3 set-up failed: {type(exc).__name__}: {exc}") from None
        defaults: dict[str, Any] = {
            "prefix": settings.S3_PREFIX,
            "url_ttl_s": settings.S3_URL_TTL_S,
            "public_base_url": settings.S3_PUBLIC_BASE_URL,
            "retry_max_s": getattr(settings, "RETRY_MAX_S", 30.0),
        }
        return cls(client, settings.S3_BUCKET, **{**defaults, **options})

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, public={self.public_base_url is not None})"

    # ------------------------------------------------------------ the Storage protocol

    def upload(self, local_path: Path, job_id: str, sha256: str, poster: Path | None = None) -> StoredObject:
        key = storage_key(job_id, sha256, self.prefix)
        shown = poster_key(key) if poster is not None else None
        size = Path(local_path).stat().st_size
        try:
            if poster is not None and shown is not None:  # first: a reported video always has its poster
                data = poster.read_bytes()
                self._call(self._put_bytes, shown, data, POSTER_TYPE, {})
            metadata = {"job-id": job_id, "sha256": sha256}
            if size >= self.multipart_threshold:
                self._call(self._put_multipart, Path(local_path), key, size, metadata)
            else:
                self._call(self._put_file, Path(local_path), key, size, sha256, metadata)
            url = self.url_for(key)
            poster_url = self.url_for(shown) if shown else None
        except Exception as exc:
            raise JobFailure(
                ErrorCode.upload_failed,
                f"upload of {key} to S3 bucket {self.bucket} failed: {describe(exc)}",
                retryable=not _permanent(exc),
            ) from exc
        log.info("uploaded video", extra={"key": key, "bytes": size, "bucket": self.bucket})
        return StoredObject(key=key, url=url, bytes=size, poster_key=shown, poster_url=poster_url)

    def url_for(self, key: str) -> str:
        """Where a client fetches `key`: under the public base URL, else a presigned GET (no network call)."""
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(key)}"
        return str(
            self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_ttl_s
            )
        )

    # ------------------------------------------------------------ the requests

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        self._retrying.copy()(fn, *args)

    def _put_bytes(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        self._client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64_sha256(data),
            Metadata=metadata,
        )

    def _put_file(self, path: Path, key: str, size: int, sha256: str, metadata: dict[str, str]) -> None:
        with path.open("rb") as body:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentLength=size,
                ContentType=CONTENT_TYPE,
                # The digest the key names: the store refuses the object if the bytes it got differ.
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                Metadata=metadata,
            )

    def _put_multipart(self, path: Path, key: str, size: int, metadata: dict[str, str]) -> None:
        upload_id, held = self._unfinished(key)
        if upload_id is None:
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=CONTENT_TYPE, Metadata=metadata, ChecksumAlgorithm="SHA256"
            )["UploadId"]
        else:
            log.info("resuming a multipart upload", extra={"key": key, "parts_held": len(held)})
        ranges = [(n, offset, min(self.part_size, size - offset)) for n, offset in _part_offsets(size, self.part_size)]

        def one(part: tuple[int, int, int]) -> dict[str, Any]:
            number, offset, length = part
            data = _read_range(path, offset, length)
            checksum = b64_sha256(data)
            prior = held.get(number)
            if prior and prior["Size"] == length and prior["ETag"].strip('"') == hashlib.md5(data).hexdigest():
                return {"PartNumber": number, "ETag": prior["ETag"], "ChecksumSHA256": checksum}
            answer = self._client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )
            return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}

        with ThreadPoolExecutor(max_workers=self.max_parallel_parts, thread_name_prefix="s3-part") as pool:
            parts = list(pool.map(one, ranges))
        self._client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    def _unfinished(self, key: str) -> tuple[str | None, dict[int, dict[str, Any]]]:
        """An unfinished multipart upload of `key` (an earlier try's), and the parts the store holds of it.

        A key allowed to write but not to list uploads (s3:ListBucketMultipartUploads) starts afresh instead.
        """
        from botocore.exceptions import ClientError

        try:
            uploads = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=key).get("Uploads", [])
            mine = [u for u in uploads if u.get("Key") == key]
            if not mine:
                return None, {}
            upload_id = mine[-1]["UploadId"]
            parts = self._client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id).get("Parts", [])
        except ClientError as exc:
            if _transient(exc):
                raise
            log.info("cannot list unfinished uploads; starting afresh", extra={"error": describe(exc)})
            return None, {}
        return upload_id, {p["PartNumber"]: p for p in parts}


def _part_offsets(size: int, part_size: int) -> list[tuple[int, int]]:
    return [(n + 1, offset) for n, offset in enumerate(range(0, size, part_size))]


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise OSError(f"{path.name} changed while it was uploaded ({len(data)} of {length} bytes at {offset})")
    return data


def probe(storage: S3Storage, key: str, data: bytes) -> None:
    """What `doctor` does: write `key` and delete it (a least-privilege key may do just that under its prefix)."""
    storage._put_bytes(key, data, "text/plain", {})
    storage._client.delete_object(Bucket=storage.bucket, Key=key)
