"""The buffer worker's heartbeat: one beat per interval on a fixed grid, from start to exit.

`ticks()` is the clock (in the spirit of arq's `poll()`): it yields on a grid `start + k·interval`, so a
slow answer or a busy moment never pushes the following beats later, and slots missed while the process
was held up are skipped, not fired in a burst. `Heartbeat` sends one beat per tick without waiting for its
answer; a beat still unanswered when the next one is due is replaced by it (its answer would be stale).
`heartbeat_body()` is what a slot's beat says, built from its held jobs and state.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable

from worker_app_fastwan.buffer.held import HeldJobs
from worker_app_fastwan.core.clock import SYSTEM_CLOCK, Clock
from worker_app_fastwan.core.devices import SlotDevice
from worker_app_fastwan.core.protocol import GpuInfo, HeartbeatRequest, SlotInfo, WorkerState

log = logging.getLogger(__name__)


async def ticks(interval_s: float, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[int]:
    """Yield at once, then at every later point of the grid; the value counts grid slots since the start."""
    start = clock.now()
    slot = 0
    while True:
        yield slot
        slot += 1
        late = clock.now() - (start + slot * interval_s)
        if late > 0:  # the loop itself was held up (or the process stopped): skip the missed slots
            slot += math.ceil(late / interval_s)
        await clock.sleep(start + slot * interval_s - clock.now())


class Heartbeat:
    """Calls `beat()` on every tick; `beat()` sends one heartbeat and handles its answer."""

    def __init__(self, interval_s: float, beat: Callable[[], Awaitable[None]], clock: Clock = SYSTEM_CLOCK) -> None:
        self.interval_s = interval_s
        self._beat = beat
        self._clock = clock
        self._current: asyncio.Task[None] | None = None
        self._ticking: asyncio.Task[None] | None = None
        self.sent = 0
        self.replaced = 0

    def start(self) -> None:
        self._ticking = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")

    async def _run(self) -> None:
        async for _ in ticks(self.interval_s, self._clock):
            self.beat_now()

    def beat_now(self) -> None:
        """Send a beat now (a drain is announced at once); the grid itself is unchanged."""
        if self._current is not None and not self._current.done():
            self._current.cancel()
            self.replaced += 1
            log.warning("heartbeat superseded: no answer in time")
        self.sent += 1
        self._current = asyncio.get_running_loop().create_task(self._guarded(), name="heartbeat-beat")

    async def _guarded(self) -> None:
        try:
            await self._beat()
        except Exception:  # noqa: BLE001 - a bug in one beat must cost that beat, never the heartbeat itself
            log.exception("heartbeat failed unexpectedly")

    async def aclose(self) -> None:
        for task in (self._ticking, self._current):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._ticking, self._current) if t is not None), return_exceptions=True)


def heartbeat_body(
    held: HeldJobs, state: WorkerState, gpu_class: str, *, gpu: GpuInfo, slot: SlotDevice, out_reason: str | None
) -> HeartbeatRequest:
    """One beat of a slot: its state (`out` with its reason once its GPU process failed for good), every job
    it holds in `job_ids` (which renews each lease) with their attempt secrets, and the one generating as
    `job_id`, with its progress."""
    shown = held.generating() or held.first()
    return HeartbeatRequest(
        gpu_class=gpu_class,
        state=state,
        job_id=shown.job_id if shown else None,
        job_ids=held.ids(),  # v1.1: every job held, generating, uploading or reporting
        attempt_secrets=held.secrets(),  # v1.2: proof of holding each one claimed with a secret
        stage=shown.stage if shown else None,
        progress=shown.progress if shown else 0.0,
        gpu=gpu,
        slot=SlotInfo(index=slot.index, device=slot.label, state="out" if out_reason else state, reason=out_reason),
    )
