"""A wake-up call from any thread to a loop on the event loop (handlers run in a thread pool).

`WakeSignal` is all a loop needs of it: `set()` from anywhere, `wait(timeout)` in the loop. Whoever waits
re-reads the store afterwards, and also after the timeout: a wake-up is a hint, the store is the truth. So
with several replicas on one PostgreSQL database the same `Wakeup` is also set by the database's notifications
(NOTIFY in the transaction that writes; each replica's `db.notify.Listener` calls `set()`), and a lost
notification only delays a reader by one timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class WakeSignal(Protocol):
    def set(self, *_: object) -> None: ...

    async def wait(self, timeout_s: float) -> None: ...


class Wakeup:
    """An asyncio.Event that any thread may set.

    A `set()` before `bind()` (or after the loop closed) is dropped: every waiter also polls on a timeout,
    so a lost wake-up only delays work, never loses it.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def set(self, *_: object) -> None:
        if self._loop is not None and self._event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout_s: float) -> None:
        """Return when set or after `timeout_s`, whichever comes first."""
        assert self._event is not None, "bind() first"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)
        self._event.clear()
