"""Waiting claims in-process (claim_wait.py): one claim woken per queued job, the longest-waiting one that fits;
a wake-up not used is passed on; a claim waits no longer than its deadline or a held-back job's grace."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator_stub.claim_wait import ClaimWaiters, wait_for_job
from orchestrator_stub.db import ClaimAnswer, Claimed, Queued
from worker_app_fastwan.core.protocol import Capabilities

pytestmark = pytest.mark.anyio
T2V = Queued("j-t2v", "t2v", 256, 256, 9)
BIG = Queued("j-big", "t2v", 1280, 1280, 241)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_queued_job_wakes_the_oldest_waiting_claim_it_fits_and_only_it() -> None:
    waiters = ClaimWaiters()
    waiters.bind(asyncio.get_running_loop())
    small = Capabilities(max_width=512, max_height=512)
    with (
        waiters.waiting(small) as first,
        waiters.waiting(Capabilities()) as second,
        waiters.waiting(Capabilities()) as third,
    ):
        waiters.offer(BIG)  # too big for the first: the second (the oldest that fits) is woken
        await asyncio.sleep(0.01)
        assert (first.event.is_set(), second.event.is_set(), third.event.is_set()) == (False, True, False)
        waiters.offer(T2V)
        await asyncio.sleep(0.01)
        assert first.event.is_set() and not third.event.is_set()
        waiters.offer(None)  # notices were missed: every claim looks again
        await asyncio.sleep(0.01)
        assert third.event.is_set()


async def test_a_wake_up_left_unused_is_passed_on() -> None:
    waiters = ClaimWaiters()
    waiters.bind(asyncio.get_running_loop())
    leaving = waiters.waiting(Capabilities())
    leaver = leaving.__enter__()  # the oldest waiting claim
    with waiters.waiting(Capabilities()) as stayer:
        waiters.offer(T2V)
        await asyncio.sleep(0.01)
        assert leaver.event.is_set() and not stayer.event.is_set()
        leaving.__exit__(None, None, None)  # its worker hung up before it claimed: the job is the next one's
        assert stayer.event.is_set() and stayer.woken_by == T2V


async def test_a_claim_returns_when_a_job_comes_and_waits_no_longer_than_its_deadline() -> None:
    waiters = ClaimWaiters()
    waiters.bind(asyncio.get_running_loop())
    answers = [ClaimAnswer(None), ClaimAnswer(Claimed("j-1", {}, 1))]
    calls = 0

    async def claim() -> ClaimAnswer:
        nonlocal calls
        calls += 1
        return answers.pop(0)

    async def now() -> float:
        return time.time()

    waiting = asyncio.ensure_future(wait_for_job(waiters, Capabilities(), claim, now, 5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done() and calls == 1
    waiters.offer(T2V)
    answer = await asyncio.wait_for(waiting, 1)
    assert answer.job is not None and calls == 2

    started = time.monotonic()
    empty = await wait_for_job(waiters, Capabilities(), lambda: _none(), now, 0.3)
    assert empty.job is None and 0.3 <= time.monotonic() - started < 1


async def test_a_held_back_job_is_claimed_again_when_its_grace_ends() -> None:
    waiters = ClaimWaiters()
    waiters.bind(asyncio.get_running_loop())
    grace_ends = time.time() + 0.3
    calls: list[float] = []

    async def claim() -> ClaimAnswer:
        calls.append(time.time())
        if time.time() < grace_ends:
            return ClaimAnswer(None, retry_at=grace_ends)
        return ClaimAnswer(Claimed("j-1", {}, 2))

    async def now() -> float:
        return time.time()

    answer = await asyncio.wait_for(wait_for_job(waiters, Capabilities(), claim, now, 5.0), 2)
    assert answer.job is not None and len(calls) == 2 and calls[1] >= grace_ends


async def _none() -> ClaimAnswer:
    return ClaimAnswer(None)
