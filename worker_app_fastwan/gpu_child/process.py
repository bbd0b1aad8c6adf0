"""One spawned GPU child process and its pipe, seen from the parent's event loop.

`ChildProcess` only moves messages: a reader thread turns what the child sends into events on an asyncio
queue (ending with `ChildExited`), and `exited` resolves when the process is gone. Deciding what the events
mean (a job's end, a restart, "unhealthy") is `handle.GpuChild`'s job; a test hands that handle a fake with
this interface instead.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from worker_app_fastwan.core.child_env import child_settings, minimal_env, only_environment
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.gpu_child.main import child_main
from worker_app_fastwan.gpu_child.messages import ChildEvent, ChildExited


class ChildProcess:
    """Spawned by `start()` (call it on the event loop); `events` and `exited` belong to that loop."""

    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = dict(env or {})  # on top of the allow-list: its slot's CUDA_VISIBLE_DEVICES
        self._ctx = mp.get_context("spawn")
        # The first semaphore starts multiprocessing's resource tracker, a process of its own: no secrets there either.
        with only_environment(minimal_env(os.environ)):
            self._cancel = self._ctx.Event()
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self.events: asyncio.Queue[ChildEvent] = asyncio.Queue()
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=child_main, args=(child_conn, self._cancel, child_settings(self.settings)), name="gpu-child"
        )
        # No B2 keys, no INTERNAL_API_KEY in the child; only its own device, when its slot has one.
        with only_environment({**minimal_env(os.environ), **self.env}):
            self._proc.start()
        child_conn.close()
        self._conn = parent_conn
        loop = asyncio.get_running_loop()
        reader = threading.Thread(target=self._read, args=(parent_conn, self._proc, loop), daemon=True)
        reader.start()

    def _read(self, conn: Connection, proc: mp.process.BaseProcess, loop: asyncio.AbstractEventLoop) -> None:
        # A thread, not loop.add_reader: recv() of a whole message may block, and must never block the loop.
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                proc.join()
                msg = ChildExited(exitcode=proc.exitcode)
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, msg)
                if isinstance(msg, ChildExited):
                    loop.call_soon_threadsafe(_resolve, self.exited, msg.exitcode)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return
            if isinstance(msg, ChildExited):
                return

    def send(self, msg: Any) -> None:
        """Raises OSError when the child is gone."""
        if self._conn is None:
            raise OSError("the GPU process was never started")
        self._conn.send(msg)

    def cancel(self) -> None:
        """Set the event the child checks at every safe point."""
        self._cancel.set()

    def clear_cancel(self) -> None:
        """Before each job."""
        self._cancel.clear()

    def kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()


def _resolve(future: asyncio.Future[int | None], exitcode: int | None) -> None:
    if not future.done():
        future.set_result(exitcode)
