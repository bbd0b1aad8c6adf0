"""Presigned output targets (protocol v1.2): the stub holds the storage key, workers get one upload each.

When the stub has storage credentials itself (the workers' variables: `STORAGE_BACKEND`, `S3_*`, `AWS_*`, or
`B2_*`, which reach B2 through its S3-compatible endpoint), every claim from a worker that says it can
(`capabilities.output_target`) and every Salad-style delivery carries an output target: presigned PUT URLs for
the MP4 and the poster, under a key of its own, `<prefix>videos/<job_id>/a<attempt>-<random>.mp4`. An attempt's
URLs can write only that attempt's key, and only once (`If-None-Match: *` is signed into them), so a late
attempt can never replace the video another attempt reported. When the job completes, the stub checks the
stored object against the result (size, then SHA-256 of the bytes read back) before it accepts it, and serves
the video and the poster to the page through fresh presigned GETs (`videos.py`).

Blocking (boto3): the routes that call it are plain `def` (FastAPI's thread pool); the dispatcher uses a thread.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from worker_app_fastwan.core.protocol import OutputTarget, UploadTarget
from worker_app_fastwan.core.storage_settings import StorageSettings

log = logging.getLogger("orchestrator_stub.outputs")

VIDEO_HEADERS = {"Content-Type": "video/mp4", "If-None-Match": "*"}
POSTER_HEADERS = {"Content-Type": "image/jpeg", "If-None-Match": "*"}
READ_TTL_S = 3600  # the page's presigned GETs: fresh at each visit


class StorageUnavailable(Exception):
    """The store could not be asked (network, 5xx): the caller answers 503 and the worker tries again."""


@dataclass(frozen=True)
class Issued:
    target: OutputTarget
    expires_at: float


class OutputStore:
    """The bucket the stub issues targets in. Holds a boto3 client, never a secret of its own."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str,
        public_url: str,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.public_url = public_url.rstrip("/")
        self.ttl_s = int(ttl_s)
        self._clock = clock

    def __repr__(self) -> str:
        return f"OutputStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @classmethod
    def from_settings(cls, settings: StorageSettings, *, public_url: str, ttl_s: float) -> OutputStore | None:
        """The store the storage variables name, or None (local storage: workers keep storing themselves)."""
        from worker_app_fastwan.core.s3_client import s3_client

        kind = settings.storage
        if kind == "s3" and settings.S3_BUCKET:
            client, bucket, prefix = s3_client(settings), settings.S3_BUCKET, settings.S3_PREFIX
        elif kind == "b2" and settings.B2_KEY_ID and settings.B2_APP_KEY and settings.B2_BUCKET_NAME:
            key = settings.B2_APP_KEY.get_secret_value()
            endpoint = settings.s3_endpoint or _b2_s3_endpoint(settings.B2_KEY_ID, key)
            client = s3_client(settings, endpoint_url=endpoint, key_id=settings.B2_KEY_ID, secret=key)
            bucket, prefix = settings.B2_BUCKET_NAME, settings.B2_PREFIX
        else:
            return None
        return cls(client, bucket, prefix=prefix, public_url=public_url, ttl_s=ttl_s)

    # ------------------------------------------------------------ issuing

    def issue(self, job_id: str, attempt: int, delivery: int | None = None) -> Issued:
        """A target for this attempt (and, for the dispatcher, this delivery of it), under keys no other has."""
        name = f"a{attempt}" + (f"-d{delivery}" if delivery is not None else "") + f"-{secrets.token_hex(8)}"
        base = f"{self.prefix}videos/{job_id}/{name}"
        job = quote(job_id, safe="")
        expires_at = self._clock() + self.ttl_s
        target = OutputTarget(
            video=self._upload(f"{base}.mp4", VIDEO_HEADERS, f"{self.public_url}/v1/jobs/{job}/video"),
            poster=self._upload(f"{base}.jpg", POSTER_HEADERS, f"{self.public_url}/v1/jobs/{job}/poster"),
            expires_at=dt.datetime.fromtimestamp(expires_at, dt.timezone.utc).isoformat(timespec="seconds"),
        )
        return Issued(target, expires_at)

    def _upload(self, key: str, headers: dict[str, str], serve_url: str) -> UploadTarget:
        url = self._client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ContentType": headers["Content-Type"],
                "IfNoneMatch": headers["If-None-Match"],
            },
            ExpiresIn=self.ttl_s,
        )
        return UploadTarget(url=url, headers=dict(headers), storage_key=key, serve_url=serve_url)

    # ------------------------------------------------------------ checking and serving

    def verify(self, key: str, size: int, sha256: str) -> str | None:
        """None when `key` holds `size` bytes whose SHA-256 is `sha256`; else why not. Raises StorageUnavailable."""
        length = self._length(key)
        if length is None:
            return f"the output target {key} holds no object"
        if length != size:
            return f"the stored video is {length} bytes, the result says {size}"
        digest = hashlib.sha256()
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            for block in iter(lambda: body.read(1 << 20), b""):
                digest.update(block)
        except Exception as exc:  # noqa: BLE001 - whatever stops the read, the check is not done
            raise StorageUnavailable(_describe(exc)) from None
        if digest.hexdigest() != sha256:
            return "the stored video's SHA-256 is not the result's"
        return None

    def exists(self, key: str) -> bool:
        return self._length(key) is not None

    def _length(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise StorageUnavailable(_describe(exc)) from None
        except Exception as exc:  # noqa: BLE001 - network
            raise StorageUnavailable(_describe(exc)) from None

    def origin(self) -> str:
        """Where `url_for` points (`scheme://host[:port]`): the page's Content-Security-Policy allows it."""
        parts = urlsplit(self.url_for("origin-probe"))
        return f"{parts.scheme}://{parts.netloc}".lower()

    def url_for(self, key: str) -> str:
        """A presigned GET for the page (no network call)."""
        return str(
            self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=READ_TTL_S
            )
        )


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code", "")
        return f"{code} (HTTP {response.get('ResponseMetadata', {}).get('HTTPStatusCode')})"
    return type(exc).__name__


def _b2_s3_endpoint(key_id: str, key: str) -> str:
    """B2's S3-compatible endpoint for this account, as B2's authorization names it."""
    from b2sdk.v2 import B2Api, InMemoryAccountInfo, InMemoryCache

    api = B2Api(InMemoryAccountInfo(), InMemoryCache())
    api.authorize_account(realm="production", application_key_id=key_id, application_key=key)
    return str(api.account_info.get_s3_api_url())
