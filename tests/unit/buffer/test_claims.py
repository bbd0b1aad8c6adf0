"""Claiming with a back-off while claims are refused (buffer/claims.py), on a fake clock: the waits are read
off the clock, never slept."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from support.clock import FakeClock

from worker_app_fastwan.buffer.claims import claim_next
from worker_app_fastwan.core.protocol import ClaimedJob, ClaimRequest
from worker_app_fastwan.orchestrator.client import ClaimReply, OrchestratorRejected

pytestmark = pytest.mark.anyio
POLL_S, MAX_S = 1.0, 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RefusingClient:
    """`claim()` refuses `refusals` times with `status`, then hands out a job (or None: nothing queued)."""

    def __init__(self, refusals: int, status: int = 403, job: ClaimedJob | None = None) -> None:
        self.refusals, self.status, self.job, self.calls = refusals, status, job, 0

    async def claim_reply(self, request: ClaimRequest) -> ClaimReply:
        self.calls += 1
        if self.calls <= self.refusals:
            raise OrchestratorRejected("claim", self.status)
        return ClaimReply(self.job)


async def _claim(client: Any, clock: FakeClock) -> ClaimedJob | None:
    reply = await claim_next(client, ClaimRequest(worker_id="w-1"), poll_s=POLL_S, max_s=MAX_S, clock=clock)
    return reply.job


async def test_refusals_back_off_exponentially_with_jitter_up_to_the_cap(caplog) -> None:
    clock, job = FakeClock(), ClaimedJob(job_id="j-1", input={})
    client = RefusingClient(refusals=6, job=job)
    claiming = asyncio.ensure_future(_claim(client, clock))
    with caplog.at_level(logging.ERROR, logger="worker_app_fastwan.buffer.claims"):
        while not claiming.done():
            await clock.advance(MAX_S + POLL_S)
    assert claiming.result() == job and client.calls == 7
    # Wait n: 2·poll·2^(n-1) plus up to one poll of jitter, never past the cap.
    for n, slept in enumerate(clock.slept, start=1):
        floor = min(MAX_S, 2 * POLL_S * 2 ** (n - 1))
        assert floor <= slept <= min(MAX_S, floor + POLL_S), (n, slept)
    assert clock.slept[-1] == MAX_S and len(clock.slept) == 6
    assert "check INTERNAL_API_KEY" in caplog.records[0].getMessage(), "a 403 names the likely fix"


async def test_nothing_queued_is_none_at_once_without_waiting() -> None:
    clock = FakeClock()
    assert await _claim(RefusingClient(refusals=0), clock) is None
    assert clock.slept == []


async def test_a_refusal_other_than_auth_does_not_blame_the_key(caplog) -> None:
    clock, client = FakeClock(), RefusingClient(refusals=1, status=422)
    claiming = asyncio.ensure_future(_claim(client, clock))
    with caplog.at_level(logging.ERROR, logger="worker_app_fastwan.buffer.claims"):
        await clock.advance(2 * POLL_S + POLL_S)
    assert await claiming is None
    message = caplog.records[0].getMessage()
    assert "HTTP 422" in message and "INTERNAL_API_KEY" not in message


async def test_cancelling_the_claim_stops_the_back_off() -> None:
    clock, client = FakeClock(), RefusingClient(refusals=100)
    claiming = asyncio.ensure_future(_claim(client, clock))
    await clock.advance(5.0)
    claiming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claiming
    calls = client.calls
    await clock.advance(100.0)
    assert client.calls == calls, "no claim after the cancel"
