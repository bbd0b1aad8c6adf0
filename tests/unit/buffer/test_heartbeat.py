"""The heartbeat's grid, its replacement of a late beat and what a beat says, in-process on a fake clock:
exact times, no real sleeps."""

from __future__ import annotations

import asyncio

import pytest
from support.clock import FakeClock, settle

from worker_app_fastwan.buffer.heartbeat import Heartbeat, heartbeat_body, ticks
from worker_app_fastwan.buffer.held import HeldJobs
from worker_app_fastwan.core.devices import SlotDevice
from worker_app_fastwan.core.job_progress import JobProgress
from worker_app_fastwan.core.protocol import ClaimedJob, GpuInfo
from worker_app_fastwan.core.schema import Stage

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_ticks_keep_a_fixed_grid_and_skip_the_slots_a_stalled_loop_missed() -> None:
    clock = FakeClock()
    start = clock.now()
    seen: list[tuple[int, float]] = []

    async def tick() -> None:
        async for slot in ticks(10.0, clock):
            seen.append((slot, clock.now() - start))
            if slot == 2:
                clock.jump(35.0)  # the whole loop is held up, as by a blocking call, to 55 s: past 30, 40 and 50
            if len(seen) == 5:
                return

    ticking = asyncio.ensure_future(tick())
    await clock.advance(3.0)  # a beat that takes 3 s does not push the grid
    await clock.advance(7.0)
    await clock.advance(10.0)
    await clock.advance(100.0)
    await ticking
    assert seen == [(0, 0.0), (1, 10.0), (2, 20.0), (6, 60.0), (7, 70.0)], "missed slots skipped, not fired"


async def test_a_beat_still_unanswered_at_the_next_tick_is_replaced() -> None:
    clock = FakeClock()
    answered: list[int] = []
    started = 0

    async def beat() -> None:
        nonlocal started
        started += 1
        n = started
        await clock.sleep(12.0 if n == 1 else 1.0)  # the first answer would come after the next tick
        answered.append(n)

    heartbeat = Heartbeat(10.0, beat, clock=clock)
    heartbeat.start()
    await clock.advance(25.0)
    await heartbeat.aclose()

    assert heartbeat.sent == 3 and heartbeat.replaced == 1
    assert answered == [2, 3], "the late beat was cancelled, its stale answer never used"


async def test_beat_now_sends_at_once_and_leaves_the_grid_alone() -> None:
    clock = FakeClock()
    at: list[float] = []

    async def beat() -> None:
        at.append(clock.now())

    heartbeat = Heartbeat(10.0, beat, clock=clock)
    heartbeat.start()
    await clock.advance(4.0)
    heartbeat.beat_now()  # a drain is announced now, not at the next tick
    await clock.advance(16.0)
    await heartbeat.aclose()
    assert [t - 1000.0 for t in at] == [0.0, 4.0, 10.0, 20.0]


async def test_a_bug_in_one_beat_costs_that_beat_only() -> None:
    clock = FakeClock()
    calls = 0

    async def beat() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    heartbeat = Heartbeat(1.0, beat, clock=clock)
    heartbeat.start()
    await clock.advance(2.0)
    await heartbeat.aclose()
    assert calls == 3, "beats go on after a failing one"


def test_the_body_names_every_held_job_and_shows_the_one_generating() -> None:
    held = HeldJobs()
    uploading = held.add(ClaimedJob(job_id="a", input={}))
    uploading.generated = True
    held.add(ClaimedJob(job_id="b", input={}))
    progress = JobProgress("b")
    progress.advance(Stage.denoising, 1, 3)
    held.on_progress(progress)
    body = heartbeat_body(held, "busy", "rtx-4090", gpu=GpuInfo(), slot=SlotDevice(1, "1"), out_reason=None)
    assert body.job_ids == ["a", "b"], "every job held renews its lease"
    assert body.job_id == "b" and body.stage is Stage.denoising and 0 < body.progress < 1
    assert body.slot is not None and (body.slot.index, body.slot.device, body.slot.state) == (1, "1", "busy")


def test_an_out_slot_says_so_with_its_reason() -> None:
    body = heartbeat_body(
        HeldJobs(), "draining", "cpu", gpu=GpuInfo(), slot=SlotDevice(0, None), out_reason="CUDA error"
    )
    assert body.job_id is None and body.job_ids == [] and body.progress == 0.0
    assert body.slot is not None and (body.slot.state, body.slot.reason) == ("out", "CUDA error")


async def test_settle_lets_woken_tasks_run() -> None:  # the fake clock's own promise, which the tests above use
    clock, done = FakeClock(), []

    async def sleeper() -> None:
        await clock.sleep(5.0)
        done.append(clock.now())

    task = asyncio.ensure_future(sleeper())
    await clock.advance(4.9)
    assert done == []
    await clock.advance(0.1)
    await settle()
    assert done == [1005.0] and task.done()
