"""The stop flag and `unless()` (core/stopping.py): wait for work unless the worker is stopping, with a grace."""

from __future__ import annotations

import asyncio

import pytest
from support.clock import settle

from worker_app_fastwan.core.stopping import Stopping

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_the_result_when_no_stop_comes() -> None:
    assert await Stopping().unless(asyncio.sleep(0, result=7)) == 7


async def test_a_stop_cancels_the_work_and_gives_none() -> None:
    stopping, cancelled = Stopping(), asyncio.Event()

    async def work() -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    waiting = asyncio.ensure_future(stopping.unless(work()))
    await settle()
    stopping.set()
    assert await waiting is None and cancelled.is_set()
    assert await stopping.unless(asyncio.sleep(0, result=2)) == 2, "work already done still counts after a stop"


async def test_work_within_its_grace_after_the_stop_finishes() -> None:
    stopping, release = Stopping(), asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "delivered"

    waiting = asyncio.ensure_future(stopping.unless(work(), grace_s=5.0))
    stopping.set()
    await settle()
    release.set()
    assert await waiting == "delivered"


async def test_work_past_its_grace_is_cut() -> None:
    stopping = Stopping()
    stopping.set()
    assert await stopping.unless(asyncio.Event().wait(), grace_s=0.01) is None


async def test_an_error_of_the_work_is_raised_not_swallowed() -> None:
    async def broken() -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        await Stopping().unless(broken())
