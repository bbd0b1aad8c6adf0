"""The heartbeat's clock and its replacement of a late beat, in-process."""

from __future__ import annotations

import asyncio
import time

import pytest

from worker_app_fastwan.buffer.heartbeat import Heartbeat, ticks

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_ticks_keep_a_fixed_grid_and_skip_the_slots_a_stalled_loop_missed() -> None:
    interval = 0.1
    loop = asyncio.get_running_loop()
    start = loop.time()
    seen: list[tuple[int, float]] = []
    async for slot in ticks(interval):
        seen.append((slot, loop.time() - start))
        if slot == 2:
            time.sleep(interval * 3.5)  # the whole loop is held up, as by a blocking call
        if len(seen) == 5:
            break

    slots = [s for s, _ in seen]
    assert slots[:3] == [0, 1, 2] and slots[3] in (6, 7), "missed slots are skipped, not fired in a burst"
    assert slots[4] == slots[3] + 1
    for slot, at in seen:  # on the grid: never early, and never drifting into the next slot
        assert slot * interval - 0.005 <= at < (slot + 1) * interval, (slot, at)


async def test_a_beat_still_unanswered_at_the_next_tick_is_replaced() -> None:
    answered: list[int] = []
    started = 0

    async def beat() -> None:
        nonlocal started
        started += 1
        n = started
        await asyncio.sleep(0.12 if n == 1 else 0.0)  # the first answer comes later than the next tick
        answered.append(n)

    heartbeat = Heartbeat(0.05, beat)
    heartbeat.start()
    await asyncio.sleep(0.18)
    await heartbeat.aclose()

    assert 1 not in answered, "the late beat was cancelled, its stale answer never used"
    assert heartbeat.replaced == 1 and answered[:2] == [2, 3]


async def test_a_bug_in_one_beat_costs_that_beat_only() -> None:
    calls = 0

    async def beat() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    heartbeat = Heartbeat(0.02, beat)
    heartbeat.start()
    for _ in range(200):
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    await heartbeat.aclose()
    assert calls >= 3, "beats go on after a failing one"
