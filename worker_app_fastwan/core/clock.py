"""The worker's clock, passed in where timing is logic (as the stub's `Store(clock=)`): the heartbeat's grid, the
progress throttle, the claim back-off, a slot's poll and drain deadline. Production uses `SYSTEM_CLOCK`; a test
hands in one that moves only when the test says (tests/support/clock.py), so that these rules are checked in
one process, exactly, without real sleeps."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (none if not positive); cancellable."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()  # what asyncio's own loop.time() reads

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


SYSTEM_CLOCK: Clock = SystemClock()


async def wait_event(clock: Clock, event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `event` at most `timeout_s` on `clock`: True if it was set."""
    setting = asyncio.ensure_future(event.wait())
    sleeping = asyncio.ensure_future(clock.sleep(timeout_s))
    try:
        await asyncio.wait({setting, sleeping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        setting.cancel()
        sleeping.cancel()
    return event.is_set()
