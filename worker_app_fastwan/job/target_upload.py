"""Uploading to an output target the orchestrator handed out with the job (protocol v1.2): plain HTTP PUTs
to presigned URLs, with no storage credentials on this box at all.

The video goes to `target.video`, the poster to `target.poster`, each with the headers the target names
(a presigned URL signs some of them: `Content-Type`, `If-None-Match: *`) plus a `Content-MD5` of the body,
which the store checks on arrival. The result names the target's `storage_key` and `serve_url`; `bytes` and
`sha256` are measured here as for any storage, and the orchestrator checks them against what it stored.

A refused or expired target is `upload_failed`, retryable, with the status code in the message; network
errors and 5xx are tried again first. `412` on a try after the first means an earlier try of ours landed
(the answer was lost), since the target may be written once only: the orchestrator's check tells. The URL's
query (its signature) never appears in a message or a log. Blocking: the runner calls it in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.protocol import OutputTarget, UploadTarget
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.job.stored import StoredObject

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class TargetRefused(Exception):
    """The target answered with an error status; `transient` ones are tried again."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}{f' ({detail})' if detail else ''}")
        self.status = status
        self.transient = status in RETRY_STATUSES


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError) or (isinstance(exc, TargetRefused) and exc.transient)


def _where(url: str) -> str:
    """scheme://host/path of a target: never its query, which carries the signature."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _detail(response: httpx.Response) -> str:
    """The store's error code and message (S3's XML), short; nothing else of the body."""
    text = response.content[:4096].decode(errors="replace")
    code = re.search(r"<Code>([^<]{1,100})</Code>", text)
    message = re.search(r"<Message>([^<]{1,200})</Message>", text)
    return ": ".join(m.group(1) for m in (code, message) if m)


def _content_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


class TargetStorage:
    """`Storage` for one job: its output target. Holds no credentials (the URLs are the capability)."""

    def __init__(
        self,
        target: OutputTarget,
        *,
        attempts: int = 3,
        retry_wait_s: float = 1.0,
        retry_max_s: float = 30.0,
        timeout_s: float = 120.0,
    ) -> None:
        self.target = target
        self._attempts, self._wait_s, self._max_s, self._timeout_s = attempts, retry_wait_s, retry_max_s, timeout_s

    def __repr__(self) -> str:
        return f"TargetStorage(key={self.target.video.storage_key!r})"

    def upload(self, local_path: Path, job_id: str, sha256: str, poster: Path | None = None) -> StoredObject:
        video = self.target.video
        size = Path(local_path).stat().st_size
        poster_target = self.target.poster if poster is not None else None
        with httpx.Client(timeout=httpx.Timeout(self._timeout_s, connect=10.0), follow_redirects=False) as client:
            if poster is not None and poster_target is not None:  # first: a reported video always has its poster
                self._put(client, poster_target, poster, "poster")
            self._put(client, video, Path(local_path), "video")
        log.info("uploaded video to its output target", extra={"key": video.storage_key, "bytes": size})
        return StoredObject(
            key=video.storage_key,
            url=video.serve_url,
            bytes=size,
            poster_key=poster_target.storage_key if poster_target else None,
            poster_url=poster_target.serve_url if poster_target else None,
        )

    def _put(self, client: httpx.Client, target: UploadTarget, path: Path, what: str) -> None:
        headers = {**target.headers, "Content-MD5": _content_md5(path)}
        tries = 0

        def put() -> None:
            nonlocal tries
            tries += 1
            with path.open("rb") as body:
                response = client.put(target.url, content=body, headers=headers)
            if response.status_code == 412 and tries > 1:
                log.warning("the output target already holds the %s: an earlier try landed", what)
                return
            if response.status_code >= 300:
                raise TargetRefused(response.status_code, _detail(response))

        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_random_exponential(multiplier=self._wait_s, max=self._max_s),
            retry=retry_if_exception(_transient),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            retrying(put)
        except (TargetRefused, httpx.HTTPError, OSError) as exc:
            reason = str(exc) if isinstance(exc, TargetRefused) else type(exc).__name__
            raise JobFailure(
                ErrorCode.upload_failed,
                f"upload of the {what} to its output target {_where(target.url)} failed: {reason}",
                retryable=True,
            ) from None

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        error = str(exc) if isinstance(exc, TargetRefused) else type(exc).__name__
        log.warning(
            "output target upload failed, trying again", extra={"attempt": state.attempt_number, "error": error}
        )
