"""Long-poll claims: a claim that finds nothing may wait for a job it can run, and is answered the moment one
is queued (docs/protocol.md, "Waiting claims").

`ClaimWaiters` keeps this replica's waiting claims in arrival order. Each job that becomes claimable (a
submission, a requeue: the store's `on_queued`, from this replica or, on PostgreSQL, through LISTEN/NOTIFY from
another) wakes the longest-waiting claim it fits, one claim per job, so a burst of submissions does not send
every idle worker to the database at once. A woken claim that leaves without using its wake-up (it got another
job, or its worker hung up) passes it on. `None` (notices may have been missed) wakes them all.

`wait_for_job` is the claim route's loop: claim; if nothing, wait to be woken (or until a job passed over for
this worker becomes its own, or the deadline); claim again. Everything here runs on the event loop; the
store's calls go to the thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from orchestrator_stub.db import ClaimAnswer, Queued
from worker_app_fastwan.core.protocol import Capabilities

MIN_RECHECK_S = 0.05  # a held-back job's grace ends: claim again no sooner than this (clock skew, rounding)


@dataclass(eq=False)
class Waiter:
    caps: Capabilities
    event: asyncio.Event = field(default_factory=asyncio.Event)
    woken_by: Queued | None = None

    def fits(self, job: Queued) -> bool:
        caps = self.caps
        return (
            job.mode in caps.modes
            and job.width <= caps.max_width
            and job.height <= caps.max_height
            and job.num_frames <= caps.max_frames
        )


class ClaimWaiters:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[Waiter] = []  # oldest first

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, job: Queued | None) -> None:
        """From any thread: `job` became claimable (None: anything may have)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._wake, job)

    def _wake(self, job: Queued | None, skip: Waiter | None = None) -> None:
        for waiter in self._waiting:
            if waiter is skip or waiter.event.is_set():
                continue
            if job is None:
                waiter.event.set()
            elif waiter.fits(job):
                waiter.woken_by = job
                waiter.event.set()
                return

    @contextlib.contextmanager
    def waiting(self, caps: Capabilities) -> Iterator[Waiter]:
        waiter = Waiter(caps)
        self._waiting.append(waiter)
        try:
            yield waiter
        finally:
            self._waiting.remove(waiter)
            if waiter.event.is_set() and waiter.woken_by is not None:
                self._wake(waiter.woken_by, skip=waiter)  # woken for a job it will not claim: the next one may


async def wait_for_job(
    waiters: ClaimWaiters,
    caps: Capabilities,
    claim: Callable[[], Awaitable[ClaimAnswer]],
    now: Callable[[], Awaitable[float]],
    wait_s: float,
) -> ClaimAnswer:
    """Claim until a job comes or `wait_s` passes. A quarantined worker's claim waits out its time (up to the
    deadline) without claiming: its next claim comes no sooner than the one it would have made anyway."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    with waiters.waiting(caps) as waiter:
        while True:
            # Cleared before the claim: a job queued while the claim runs wakes the next wait, never goes unseen.
            waiter.event.clear()
            waiter.woken_by = None
            answer = await claim()
            left = deadline - loop.time()
            if answer.job is not None or left <= 0:
                return answer
            if answer.quarantined_until is not None:
                await asyncio.sleep(min(left, max(MIN_RECHECK_S, answer.quarantined_until - await now())))
                return answer
            timeout = left
            if answer.retry_at is not None:
                timeout = min(timeout, max(MIN_RECHECK_S, answer.retry_at - await now()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiter.event.wait(), timeout)
