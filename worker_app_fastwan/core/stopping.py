"""The stop flag of a long-running mode, and "wait for this unless we are stopping" (with a grace)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

_T = TypeVar("_T")


class Stopping:
    """Set once, on the first SIGTERM/SIGINT (or at the end of a run); shared by every loop of a worker."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    async def unless(self, aw: Awaitable[_T], grace_s: float = 0.0) -> _T | None:
        """`aw`'s result; or None, with `aw` cancelled, if it is still going `grace_s` after the stop."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and grace_s > 0:
                await asyncio.wait({task}, timeout=grace_s)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
