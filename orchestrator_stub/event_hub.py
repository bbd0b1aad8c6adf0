"""One reader of the event log per process, and the streams that follow it.

Each stream could poll the store on its own, but a thousand idle streams would then cost a thousand queries for
every event. Instead one task per process (`EventHub.run`) reads new events, once, when the store's wake-up
fires (`WakeSignal`: set after every commit that wrote an event; on PostgreSQL also through LISTEN/NOTIFY when
another replica wrote one) or every `poll_s` anyway; it keeps the latest in a ring bounded in count and bytes,
and wakes only the streams waiting on that job (and those following every job). A stream takes its events from
the ring; one behind the ring (a reconnect with an old Last-Event-ID, a job quiet while thousands of others
changed) reads pages from the store until it has caught up. The store stays the truth: the ring
caches what it says.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from orchestrator_stub.db import FINAL_EVENTS, EventRow, Store
from orchestrator_stub.views import event_view
from orchestrator_stub.wakeup import WakeSignal

log = logging.getLogger("orchestrator_stub.event_hub")

RING_EVENTS = 2048
RING_BYTES = 4 * 1024 * 1024
READ_BATCH = 500
PAGE = 100  # a stream catching up from the store reads this many at a time: its memory stays bounded


@dataclass(frozen=True)
class Event:
    id: int
    job_id: str
    type: str
    payload: str  # the JSON a stream sends as the event's data (`views.event_view`)

    @property
    def final(self) -> bool:
        return self.type in FINAL_EVENTS


def to_event(row: EventRow) -> Event:
    payload = json.dumps(event_view(row), separators=(",", ":"), ensure_ascii=False)
    return Event(row.id, row.job_id, row.type, payload)


class EventHub:
    def __init__(
        self,
        store: Store,
        wakeup: WakeSignal,
        *,
        poll_s: float = 1.0,
        ring_events: int = RING_EVENTS,
        ring_bytes: int = RING_BYTES,
    ) -> None:
        self._store = store
        self._wakeup = wakeup
        self._poll_s = poll_s
        self._max_events = ring_events
        self._max_bytes = ring_bytes
        self._ring: list[Event] = []
        self._ids: list[int] = []  # the ring's ids, for bisect
        self._bytes = 0
        self._started = False
        self._cursor = 0  # every event with an id up to here has been read
        self._floor = 0  # the ring holds every event with floor < id <= cursor
        # Streams waiting for news of one job (key: its id) or of any (key: None): an event and its waiter count.
        self._waiters: dict[str | None, tuple[asyncio.Event, int]] = {}

    @property
    def cursor(self) -> int:
        return self._cursor

    async def run(self) -> None:
        """Read what is new whenever woken (and every `poll_s`), until cancelled."""
        while not self._started:
            try:
                self._cursor = self._floor = await asyncio.to_thread(self._store.latest_event_id)
                self._started = True
            except Exception:
                log.exception("could not read the event log")
                await asyncio.sleep(self._poll_s)
        while True:
            try:
                events = await asyncio.to_thread(self._read, self._cursor, READ_BATCH, None)
            except Exception:
                log.exception("could not read the event log")
                events = []
            if events:
                self._add(events)
            if len(events) < READ_BATCH:
                await self._wakeup.wait(self._poll_s)

    def _read(self, after: int, limit: int, job_id: str | None) -> list[Event]:
        """Events from the store, made ready to send (in a worker thread: a query, and JSON for each)."""
        return [to_event(row) for row in self._store.events_after(after, limit, job_id)]

    def _add(self, events: list[Event]) -> None:
        for event in events:
            self._ring.append(event)
            self._ids.append(event.id)
            self._bytes += len(event.payload)
        self._cursor = events[-1].id
        drop = 0
        while len(self._ring) - drop > self._max_events or (self._bytes > self._max_bytes and drop < len(self._ring)):
            self._bytes -= len(self._ring[drop].payload)
            drop += 1
        if drop:
            self._floor = self._ring[drop - 1].id
            del self._ring[:drop], self._ids[:drop]
        for key in {event.job_id for event in events} | {None}:
            waiting = self._waiters.pop(key, None)
            if waiting is not None:
                waiting[0].set()

    def cached_after(self, after: int, job_id: str | None = None) -> list[Event] | None:
        """The events past `after` (of one job, or all) from the ring; None when the ring does not reach back
        that far, and the store must be asked."""
        if not self._started or after < self._floor:
            return None
        events = self._ring[bisect.bisect_right(self._ids, after) :]
        return events if job_id is None else [e for e in events if e.job_id == job_id]

    async def wait(self, job_id: str | None, timeout_s: float) -> bool:
        """Until an event of `job_id` (None: of any job) is read (True), or `timeout_s` passes (False)."""
        event, count = self._waiters.get(job_id, (asyncio.Event(), 0))
        self._waiters[job_id] = (event, count + 1)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
            return event.is_set()
        finally:
            current = self._waiters.get(job_id)
            if current is not None and current[0] is event:  # not fired meanwhile: one waiter fewer
                if current[1] <= 1:
                    del self._waiters[job_id]
                else:
                    self._waiters[job_id] = (event, current[1] - 1)

    async def follow(self, after: int, job_id: str | None, idle_s: float) -> AsyncIterator[Event | None]:
        """Every event past `after` (of one job, or of all) in id order, then each new one as it is read; None
        after each `idle_s` without any, so the caller may do its periodic work. Never ends by itself."""
        covered = after  # every event with an id up to here has been yielded, or is another job's
        while True:
            events = self.cached_after(covered, job_id)
            if events is not None:
                reached = max(covered, self._cursor)
            else:
                mark = self._cursor  # every event up to here was committed before the read below starts
                events = await asyncio.to_thread(self._read, covered, PAGE, job_id)
                last = events[-1].id if events else covered
                reached = last if len(events) == PAGE else max(last, mark, covered)
            for event in events:
                yield event
            covered = reached
            if not events and not await self.wait(job_id, idle_s):
                yield None


async def run_event_pruner(store: Store, retention_s: float, every_s: float = 600.0) -> None:
    """Forget the events of jobs final for longer than `retention_s` (`Store.prune_events`), every `every_s`."""
    while True:
        try:
            pruned = await asyncio.to_thread(store.prune_events, time.time() - retention_s)
            if pruned:
                log.info("old events pruned", extra={"events": pruned})
        except Exception:  # a hiccup (disk full, locked file) must not stop future passes
            log.exception("event pruning failed")
        await asyncio.sleep(every_s)
