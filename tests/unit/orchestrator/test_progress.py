"""The progress throttle's timing (orchestrator/progress.py) on a fake clock and a recording client: when each
report goes out, exactly. Over real HTTP with the real client: test_client.py's reporter tests."""

from __future__ import annotations

import asyncio

import pytest
from support.clock import FakeClock

from worker_app_fastwan.core.protocol import ProgressUpdate
from worker_app_fastwan.core.schema import Stage
from worker_app_fastwan.orchestrator.progress import ProgressThrottle

pytestmark = pytest.mark.anyio
INTERVAL_S = 2.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingClient:
    def __init__(self, clock: FakeClock, send_s: float = 0.0) -> None:
        self.clock, self.send_s = clock, send_s
        self.sent: list[tuple[float, str, ProgressUpdate]] = []

    async def post_progress(self, job_id: str, update: ProgressUpdate) -> None:
        if self.send_s:
            await self.clock.sleep(self.send_s)
        self.sent.append((round(self.clock.now() - 1000.0, 6), job_id, update))


def throttle(clock: FakeClock, client: RecordingClient) -> ProgressThrottle:
    return ProgressThrottle(client, "w-1", min_interval_s=INTERVAL_S, clock=clock)  # type: ignore[arg-type]


async def test_one_report_per_interval_within_a_stage_and_the_last_value_follows() -> None:
    clock = FakeClock()
    client = RecordingClient(clock)
    reporter = throttle(clock, client)
    for step in range(1, 6):
        reporter.report("j", Stage.denoising, step / 10, step=step, total_steps=10)
        await clock.advance(0.5)  # five steps in 2.5 s
    await clock.advance(10.0)
    sent = [(at, u.step) for at, _, u in client.sent]
    assert sent == [(0.0, 1), (2.0, 4), (4.0, 5)], "the first at once, then one per interval, the newest value"


async def test_a_stage_change_goes_out_at_once() -> None:
    clock = FakeClock()
    client = RecordingClient(clock)
    reporter = throttle(clock, client)
    reporter.report("j", Stage.downloading, 0.05)
    await clock.advance(0.1)
    reporter.report("j", Stage.denoising, 0.1, step=0, total_steps=3)
    await clock.advance(0.1)
    reporter.report("j", Stage.decoding, 0.9)
    await clock.advance(0.0)
    assert [(at, u.stage) for at, _, u in client.sent] == [
        (0.0, Stage.downloading),
        (0.1, Stage.denoising),
        (0.2, Stage.decoding),
    ]


async def test_progress_never_goes_down_and_a_new_job_starts_afresh() -> None:
    clock = FakeClock()
    client = RecordingClient(clock)
    reporter = throttle(clock, client)
    reporter.report("a", Stage.denoising, 0.6)
    await clock.advance(0.0)
    reporter.report("a", Stage.decoding, 0.3)
    await clock.advance(0.0)
    reporter.report("b", Stage.downloading, 0.05)
    await clock.advance(0.0)
    assert [(job, u.progress) for _, job, u in client.sent] == [("a", 0.6), ("a", 0.6), ("b", 0.05)]


async def test_aclose_sends_what_is_held_back_without_waiting_out_the_interval() -> None:
    clock = FakeClock()
    client = RecordingClient(clock)
    reporter = throttle(clock, client)
    reporter.report("j", Stage.denoising, 0.2, step=1)
    await clock.advance(0.0)
    reporter.report("j", Stage.denoising, 0.3, step=2)  # held back for 2 s
    await clock.advance(0.5)
    closing = asyncio.ensure_future(reporter.aclose())
    await clock.advance(0.0)
    await closing
    assert [(at, u.step) for at, _, u in client.sent] == [(0.0, 1), (0.5, 2)]
    reporter.report("j", Stage.denoising, 0.4, step=3)
    await clock.advance(10.0)
    assert len(client.sent) == 2, "nothing after close"


async def test_a_slow_send_holds_nothing_up_and_the_queue_keeps_the_newest_per_stage() -> None:
    clock = FakeClock()
    client = RecordingClient(clock, send_s=5.0)  # each send takes 5 s
    reporter = throttle(clock, client)
    reporter.report("j", Stage.downloading, 0.05)
    for step in range(1, 4):  # while the first send is in flight
        reporter.report("j", Stage.denoising, 0.1 * step, step=step)
    await clock.advance(20.0)
    assert [(at, u.stage, u.step) for at, _, u in client.sent] == [
        (5.0, Stage.downloading, None),
        (10.0, Stage.denoising, 3),
    ]
