"""The worker's calls to the orchestrator (docs/protocol.md); `progress.py` throttles progress.

Which failures are retried, and how, is decided in one place (`RetryPolicy`, `is_retryable`): network
errors and 408/429/5xx are retried with jittered exponential backoff; any other 4xx is final. Claim and
status are retried; heartbeat and progress get one quick attempt, because the next one supersedes them.
The API key lives only in the httpx client's default headers: never in logs, messages or reprs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)

from worker_app_fastwan.core.protocol import (
    QUARANTINE_HEADER,
    WAIT_HEADER,
    ClaimedJob,
    ClaimRequest,
    ClaimResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    ProgressUpdate,
    StatusUpdate,
)
from worker_app_fastwan.core.settings import mask_userinfo

if TYPE_CHECKING:
    from worker_app_fastwan.core.settings import Settings

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-Internal-Api-Key"
RETRYABLE_STATUSES = frozenset({408, 429})  # and every 5xx
_Body = TypeVar("_Body", bound=BaseModel)


class OrchestratorError(Exception):
    """A call to the orchestrator failed; the message names the call, never the API key."""


class RetryableStatus(OrchestratorError):
    """408, 429 or 5xx: worth another attempt."""

    def __init__(self, call: str, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(f"{call}: orchestrator answered HTTP {status_code}")


class OrchestratorRejected(OrchestratorError):
    """Any other 4xx (or an unreadable answer): retrying the same request cannot help."""

    def __init__(self, call: str, status_code: int, detail: str = "") -> None:
        self.status_code = status_code
        super().__init__(f"{call}: orchestrator answered HTTP {status_code}" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class ClaimReply:
    """A claim's answer: the job, or None with what the orchestrator said about it (v1.3): whether it held the
    claim open waiting for a job (`waited`: claim again at once, no poll sleep), and why this worker got nothing
    (`note`, e.g. a quarantine), if it said."""

    job: ClaimedJob | None
    waited: bool = False
    note: str | None = None


class HeartbeatFailed(OrchestratorError):
    """One heartbeat did not get through; the next one, a few seconds later, supersedes it."""


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, RetryableStatus))


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retried calls: random in [0, initial_s·2^n], capped at max_s (protocol: ~1 s up to ~60 s)."""

    initial_s: float = 1.0
    max_s: float = 60.0

    def retrying(
        self, call: str, deadline_s: float | None = None, on_retry: Callable[[], None] | None = None
    ) -> AsyncRetrying:
        """Retry until success, a final answer, or `deadline_s` (None: no limit; cancel the task to stop).
        `on_retry` is called before each wait (a caller that pauses while a call is failing)."""

        def before_sleep(state: RetryCallState) -> None:
            _log_retry(call, state)
            if on_retry is not None:
                on_retry()

        return AsyncRetrying(
            retry=retry_if_exception(is_retryable),
            wait=wait_random_exponential(multiplier=self.initial_s, max=self.max_s),
            stop=stop_never if deadline_s is None else stop_after_delay(deadline_s),
            before_sleep=before_sleep,
            reraise=True,
        )


def _log_retry(call: str, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "orchestrator call failed, retrying",
        extra={
            "call": call,
            "attempt": state.attempt_number,
            "error": describe(exc) if exc else "",
            "sleep_s": round(state.upcoming_sleep, 3),
        },
    )


def _segment(value: str) -> str:
    """A path segment; "." and ".." would be normalised away and hit another endpoint."""
    if value in ("", ".", ".."):
        raise ValueError(f"invalid id for a URL path: {value!r}")
    return quote(value, safe="")


class OrchestratorClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        quick_timeout_s: float = 3.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.shown_url = mask_userinfo(self.base_url)  # what logs and reprs show: never a user:password
        self.retry = RetryPolicy(initial_s=retry_initial_s, max_s=retry_max_s)
        self._timeout_s = timeout_s
        self._quick = httpx.Timeout(quick_timeout_s)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers={API_KEY_HEADER: api_key}, timeout=timeout_s, transport=transport
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OrchestratorClient | None:
        """None when no ORCHESTRATOR_BASE_URL is set (queue mode without progress reports)."""
        if not settings.orchestrator_url:
            return None
        # A heartbeat's answer must come within its interval to be of use.
        return cls(
            settings.orchestrator_url,
            settings.api_key(),
            retry_max_s=settings.RETRY_MAX_S,
            quick_timeout_s=min(3.0, settings.HEARTBEAT_INTERVAL_S),
        )

    def __repr__(self) -> str:
        return f"OrchestratorClient(base_url={self.shown_url!r})"

    async def __aenter__(self) -> OrchestratorClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def claim(self, req: ClaimRequest, *, deadline_s: float | None = None) -> ClaimedJob | None:
        """The next job, or None when nothing is queued (204)."""
        return (await self.claim_reply(req, deadline_s=deadline_s)).job

    async def claim_reply(self, req: ClaimRequest, *, deadline_s: float | None = None) -> ClaimReply:
        """The next job, or why not. A claim asking to wait (`wait_s`) gets that much longer to be answered."""
        timeout = httpx.Timeout(self._timeout_s + req.wait_s) if req.wait_s > 0 else None
        response: httpx.Response = await self.retry.retrying("claim", deadline_s)(
            self._post, "claim", "/internal/buffer/jobs/claim", req, timeout=timeout
        )
        if response.status_code == 204:
            note = response.headers.get(QUARANTINE_HEADER)
            return ClaimReply(
                None, waited=_waited(response.headers.get(WAIT_HEADER)), note=note[:500] if note else None
            )
        return ClaimReply(_parse(ClaimResponse, response, "claim").job)

    async def heartbeat(self, worker_id: str, hb: HeartbeatRequest) -> HeartbeatResponse:
        """One quick attempt; raises `HeartbeatFailed` on any failure."""
        path = f"/internal/buffer/workers/{_segment(worker_id)}/heartbeat"
        try:
            response = await self._post("heartbeat", path, hb, timeout=self._quick)
            return _parse(HeartbeatResponse, response, "heartbeat")
        except (httpx.HTTPError, OrchestratorError) as exc:
            raise HeartbeatFailed(f"heartbeat: {describe(exc)}") from None

    async def post_status(
        self,
        job_id: str,
        update: StatusUpdate,
        *,
        deadline_s: float | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> Literal["ok", "gone"]:
        """ "ok" once accepted, "gone" on 409 (the job is no longer ours); retried until one of those.

        Raises `OrchestratorRejected` on another 4xx, or the last retryable error once `deadline_s` passes.
        """
        path = f"/internal/buffer/jobs/{_segment(job_id)}/status"
        retrying = self.retry.retrying("status", deadline_s, on_retry)
        response: httpx.Response = await retrying(self._post, "status", path, update, also_ok=(409,))
        return "gone" if response.status_code == 409 else "ok"

    async def post_progress(self, job_id: str, update: ProgressUpdate) -> None:
        """Best effort: one quick attempt, never raises."""
        try:
            path = f"/internal/videogen/jobs/{_segment(job_id)}/progress"
            await self._post("progress", path, update, timeout=self._quick)
        except Exception as exc:  # a lost progress report must never fail or delay the job
            log.debug("progress report dropped", extra={"job_id": job_id, "error": describe(exc)})

    async def _post(
        self,
        call: str,
        path: str,
        body: BaseModel,
        *,
        also_ok: tuple[int, ...] = (),
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        response = await self._http.post(
            path,
            content=body.model_dump_json(),
            headers={"Content-Type": "application/json"},
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        code = response.status_code
        if response.is_success or code in also_ok:
            return response
        if code in RETRYABLE_STATUSES or code >= 500:
            raise RetryableStatus(call, code)
        raise OrchestratorRejected(call, code)


def _waited(header: str | None) -> bool:
    """Whether a 204's `X-Claim-Wait-S` says the orchestrator held the claim (a v1.2 one sends none)."""
    try:
        return header is not None and float(header) > 0
    except ValueError:
        return False


def _parse(model: type[_Body], response: httpx.Response, call: str) -> _Body:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        detail = f"unexpected body ({exc.error_count()} errors)"
        raise OrchestratorRejected(call, response.status_code, detail) from None
