"""Claiming the next job, with a growing, jittered back-off while the orchestrator refuses claims.

A refused claim (401/403 for a bad INTERNAL_API_KEY, another 4xx) cannot succeed by retrying at once, but a
fixed setting or orchestrator may make the next one succeed: back off from 2·CLAIM_POLL_S up to RETRY_MAX_S,
plus up to CLAIM_POLL_S of jitter so that a fleet with the same bad key does not come back in lock-step.
Network errors and 5xx are retried inside `OrchestratorClient.claim` itself.
"""

from __future__ import annotations

import logging

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from worker_app_fastwan.core.clock import SYSTEM_CLOCK, Clock
from worker_app_fastwan.core.protocol import ClaimRequest
from worker_app_fastwan.orchestrator.client import ClaimReply, OrchestratorClient, OrchestratorRejected

log = logging.getLogger(__name__)


def refusal_backoff(poll_s: float, max_s: float) -> wait_exponential_jitter:
    """The wait before refused claim n (1, 2, …): min(max_s, 2·poll_s·2^(n-1) + U(0, poll_s))."""
    return wait_exponential_jitter(multiplier=2 * poll_s, max=max_s, jitter=poll_s)


async def claim_next(
    client: OrchestratorClient, request: ClaimRequest, *, poll_s: float, max_s: float, clock: Clock = SYSTEM_CLOCK
) -> ClaimReply:
    """The next job, or why none; refusals are retried (cancel the task to stop)."""
    retrying = AsyncRetrying(
        sleep=clock.sleep,
        retry=retry_if_exception_type(OrchestratorRejected),
        wait=refusal_backoff(poll_s, max_s),
        before_sleep=_log_refusal,
        reraise=True,
    )
    return await retrying(client.claim_reply, request)


def _log_refusal(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    status = getattr(exc, "status_code", None)
    hint = " check INTERNAL_API_KEY" if status in (401, 403) else ""
    log.error(
        f"claim refused by the orchestrator (HTTP {status});{hint}",
        extra={"error": str(exc), "retry_in_s": round(state.upcoming_sleep, 2), "refusals": state.attempt_number},
    )
