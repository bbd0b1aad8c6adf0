"""A clock for in-process tests of timing logic (worker_app_fastwan/core/clock.py): time moves only when the
test calls `advance()` (waking every sleeper whose time has come, in order, letting the loop run after each),
or `jump()` (time passes, as while the event loop is held up, but nobody is woken yet)."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.slept: list[float] = []  # every sleep asked for, in order

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(seconds, 0.0), next(self._order), future))
        await future

    def jump(self, seconds: float) -> None:
        self._now += seconds

    async def advance(self, seconds: float = 0.0) -> None:
        target = self._now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, when)
            if not future.done():
                future.set_result(None)
            await settle()
        self._now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every task that can run, run (and what it wakes in turn), without time passing."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class ManualClock:
    """A clock for code that calls its clock for the time (the stub's store, its throttles): the time is `now`,
    moved by the test."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
