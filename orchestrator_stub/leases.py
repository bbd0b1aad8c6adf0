"""Retry policy: what happens to a claimed job whose lease ran out or whose worker reported a retryable
failure, and the sweeper that expires leases.

The SQL lives in the `db` package; this module decides (requeue, time out, or finish a requested cancel) and
runs the periodic check. Claims, heartbeats and status calls also expire leases first, so a lease is
lost exactly when it runs out, whatever the sweeper's timing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import Enum
from typing import Any

from worker_app_fastwan.core.schema import ErrorCode, JobError

log = logging.getLogger("orchestrator_stub.leases")


class Expiry(str, Enum):
    requeue = "requeue"
    timeout = "timeout"
    cancelled = "cancelled"


def expiry_outcome(attempt: int, cancel_requested: bool, max_attempts: int) -> Expiry:
    # A cancel nobody acknowledged is still a cancel: requeueing it would run a job the user gave up on.
    if cancel_requested:
        return Expiry.cancelled
    return Expiry.timeout if attempt >= max_attempts else Expiry.requeue


def failure_requeues(error: dict[str, Any], attempt: int, cancel_requested: bool, max_attempts: int) -> bool:
    """Whether a worker's `failed` report sends the job back to the queue instead of making it final.

    Only a retryable error (out of memory, upload failed, stopped by a drain) is worth another attempt,
    never a cancelled job, and never past `max_attempts`, so a job that always fails still ends.
    """
    if cancel_requested or not error.get("retryable"):
        return False
    return attempt < max_attempts


def expiry_error(outcome: Expiry, attempt: int, lease_seconds: float) -> dict[str, Any]:
    """The error a lease expiry ends the attempt with (kept in the job's requeues when it is requeued)."""
    if outcome is Expiry.cancelled:
        return cancelled_error("cancelled by request; the worker stopped renewing its lease")
    if outcome is Expiry.requeue:
        message = f"lease of {lease_seconds:g}s not renewed on attempt {attempt}; back in the queue"
        return JobError(code=ErrorCode.timeout, message=message, retryable=True).model_dump(mode="json")
    message = f"lease of {lease_seconds:g}s not renewed on {attempt} attempt(s); giving up"
    return JobError(code=ErrorCode.timeout, message=message, retryable=False).model_dump(mode="json")


def cancelled_error(message: str = "cancelled by request") -> dict[str, Any]:
    return JobError(code=ErrorCode.cancelled, message=message, retryable=False).model_dump(mode="json")


async def run_lease_sweeper(expire_leases: Callable[[], object], interval_s: float) -> None:
    """Call `expire_leases` (`Store.expire_leases`, blocking) every `interval_s` until cancelled."""
    while True:
        try:
            await asyncio.to_thread(expire_leases)
        except Exception:  # a hiccup (disk full, locked file) must not stop future sweeps
            log.exception("lease sweep failed")
        await asyncio.sleep(interval_s)
