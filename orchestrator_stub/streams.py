"""Server-sent event streams (sse-starlette): `GET /v1/jobs/{job_id}/events` and `GET /v1/events`.

- **One job's stream** replays the job's events from the start (or after `Last-Event-ID`), then sends each new one
  as it happens, and closes after the final one (`completed`, `failed`, `cancelled`). A client that reconnects
  with the last id it saw gets what it missed and nothing twice; one that already has the final event gets 204
  (which tells a browser's EventSource to stop reconnecting).
- **Every job's stream** (the page's feed) starts now (or after `Last-Event-ID`, or `?last_event_id=` for a
  first connection, which EventSource cannot give a header), and also sends a `queue` event, without an id,
  with the queue counts and the workers, when they change (at most every QUEUE_EVERY_S).

Every event has `id:` (the event log's id), `event:` (its type) and `data:` (JSON, `views.event_view`). Idle
streams get a keep-alive comment every STREAM_PING_S. A malformed `Last-Event-ID` (or one past the newest event:
another database's) is a 400, an unknown job a 404. Bad clients: each address may hold STREAMS_PER_CLIENT
streams (429 past that) and the stub STREAMS_MAX (503); a stream holds one event at a time (or one page of a
replay), and a client that takes no data for STREAM_SEND_TIMEOUT_S is dropped, its connection aborted, so what
it did not read is never buffered beyond the socket's own buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from orchestrator_stub.auth import client_of
from orchestrator_stub.db import Store
from orchestrator_stub.event_hub import EventHub
from orchestrator_stub.page import queue_snapshot
from orchestrator_stub.settings import StubSettings
from worker_app_fastwan.core.schema import ID_PATTERN

log = logging.getLogger("orchestrator_stub.streams")

JOB_ID = Path(pattern=ID_PATTERN, max_length=128)
QUEUE_EVERY_S = 1.0  # the page's workers and counts: a fresh `queue` event at most this often (as it polled)
JOB_IDLE_S = 30.0  # a quiet job's stream looks at the ring this often even unwoken (a lost wake-up)
MAX_EVENT_ID = 2**63 - 1
# The connection's asyncio transport, put into the scope by `StreamConnections`.
TRANSPORT = "orchestrator_stub.transport"
# What a stream's connection may hold unsent, in the process and in the kernel each: an event is a few KB, so a
# reader that keeps up never comes near it, and a thousand that do not hold tens of MB, not gigabytes.
STREAM_BUFFER_BYTES = 32 * 1024
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
    400: {"description": "malformed Last-Event-ID"},
    429: {"description": "STREAMS_PER_CLIENT streams open from this address"},
    503: {"description": "STREAMS_MAX streams open"},
}


class StreamSlots:
    """How many streams each address, and the whole stub, holds open (the event loop is their only user)."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self._by_client: dict[str, int] = {}
        self.open = 0

    def take(self, client: str) -> JSONResponse | None:
        """Take a slot for `client`, or the refusal to answer with."""
        if self._by_client.get(client, 0) >= self.per_client:
            message = (
                f"this address has {self.per_client} event streams open (STREAMS_PER_CLIENT): close one first,"
                " or follow every job on one stream (GET /v1/events)"
            )
            return _error(429, "too_many_streams", message, retry_after=5)
        if self.open >= self.total:
            message = f"the stub has {self.total} event streams open (STREAMS_MAX): try again later"
            return _error(503, "too_many_streams", message, retry_after=5)
        self._by_client[client] = self._by_client.get(client, 0) + 1
        self.open += 1
        return None

    def give_back(self, client: str) -> None:
        left = self._by_client.get(client, 1) - 1
        if left > 0:
            self._by_client[client] = left
        else:
            self._by_client.pop(client, None)
        self.open -= 1


class EventStream(EventSourceResponse):
    """An SSE response that gives its slot back however it ends, and drops a client that stopped reading."""

    def __init__(
        self,
        content: AsyncIterator[ServerSentEvent],
        *,
        settings: StubSettings,
        release: Callable[[], None],
        what: dict[str, Any],
    ) -> None:
        super().__init__(
            content,
            ping=settings.STREAM_PING_S,
            send_timeout=settings.STREAM_SEND_TIMEOUT_S,
            ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
        )
        self._release = release
        self._what = what

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = (scope.get("extensions") or {}).get(TRANSPORT)
        if transport is not None:
            _bound_buffers(transport)
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.warning("event stream dropped: the client stopped reading", extra=self._what)
            if transport is not None:
                transport.abort()  # close() would wait for the unread bytes to drain first: forever
                await asyncio.sleep(0)  # let the server see the connection lost before this returns
        finally:
            self._release()


def _bound_buffers(transport: Any) -> None:
    """Cap what the connection holds unsent (STREAM_BUFFER_BYTES in the process, about as much in the kernel),
    so a reader that stops is found out, and dropped, after that much rather than after megabytes."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        transport.set_write_buffer_limits(high=STREAM_BUFFER_BYTES)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_BUFFER_BYTES)


class StreamConnections:
    """ASGI wrapper (outermost, around the whole app) that hands each HTTP request its connection's transport,
    for event streams to bound its buffers and to drop it.

    ASGI has neither: an app that stops answering leaves the server to close the connection gracefully, which
    waits for unsent bytes to drain, so a client that stopped reading would keep its connection and buffers for
    as long as it likes. uvicorn's `send` is its protocol's bound method, which holds the transport; under
    another server (or the test client) there is none to take, and streams end the graceful way.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Any]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if scope["type"] == "http" and callable(getattr(transport, "abort", None)):
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), TRANSPORT: transport}}
        await self.app(scope, receive, send)


class QueueFeed:
    """The queue counts and workers every page stream sends: read from the store at most once a second,
    however many streams ask."""

    def __init__(self, store: Store, max_age_s: float = 1.0) -> None:
        self._store = store
        self._max_age_s = max_age_s
        self._lock = asyncio.Lock()
        self._at = float("-inf")
        self._snapshot = ""

    async def get(self) -> str:
        async with self._lock:
            if time.monotonic() - self._at > self._max_age_s:
                answer = await asyncio.to_thread(queue_snapshot, self._store, time.time())
                self._snapshot = json.dumps(answer, separators=(",", ":"), ensure_ascii=False)
                self._at = time.monotonic()
            return self._snapshot


def build_router(store: Store, hub: EventHub, settings: StubSettings) -> APIRouter:
    router = APIRouter(tags=["public"])
    slots = StreamSlots(settings.STREAMS_PER_CLIENT, settings.STREAMS_MAX)
    feed = QueueFeed(store)

    def opened(request: Request, what: dict[str, Any], content: AsyncIterator[ServerSentEvent]) -> Response:
        client = client_of(request.scope)
        refusal = slots.take(client)
        if refusal is not None:
            log.warning("event stream refused", extra=what | {"open": slots.open})
            return refusal
        return EventStream(content, settings=settings, release=lambda: slots.give_back(client), what=what)

    @router.get("/v1/jobs/{job_id}/events", responses={**STREAM_RESPONSES, 204: {}, 404: {}})
    async def job_events(
        request: Request,
        job_id: str = JOB_ID,
        last_event_id: str | None = Query(default=None, description="where a first connection resumes"),
    ) -> Response:
        try:
            after = parse_last_event_id(request, last_event_id)
        except ValueError as exc:
            return _error(400, "invalid_input", str(exc))
        known, final_id, latest = await asyncio.to_thread(store.job_stream_start, job_id)
        if not known:
            return _error(404, "not_found", f"unknown job {job_id}")
        if after is not None and after > latest:
            return _past_latest(after, latest)
        if after is not None and final_id is not None and after >= final_id:
            return Response(status_code=204)  # it has the final event: nothing more will come

        async def events() -> AsyncIterator[ServerSentEvent]:
            async for event in hub.follow(after or 0, job_id, JOB_IDLE_S):
                if event is None:
                    continue
                yield ServerSentEvent(data=event.payload, event=event.type, id=str(event.id))
                if event.final:
                    return

        return opened(request, {"job_id": job_id, "after": after}, events())

    @router.get("/v1/events", responses=STREAM_RESPONSES)
    async def all_events(
        request: Request,
        last_event_id: str | None = Query(default=None, description="where a first connection resumes"),
    ) -> Response:
        try:
            after = parse_last_event_id(request, last_event_id)
        except ValueError as exc:
            return _error(400, "invalid_input", str(exc))
        latest = await asyncio.to_thread(store.latest_event_id)
        if after is not None and after > latest:
            return _past_latest(after, latest)
        start = latest if after is None else after

        async def events() -> AsyncIterator[ServerSentEvent]:
            sent, due = await feed.get(), time.monotonic() + QUEUE_EVERY_S
            yield ServerSentEvent(data=sent, event="queue")
            async for event in hub.follow(start, None, QUEUE_EVERY_S):
                if event is not None:
                    yield ServerSentEvent(data=event.payload, event=event.type, id=str(event.id))
                if time.monotonic() >= due:
                    due = time.monotonic() + QUEUE_EVERY_S
                    if (queue := await feed.get()) != sent:
                        sent = queue
                        yield ServerSentEvent(data=queue, event="queue")

        return opened(request, {"job_id": None, "after": after}, events())

    return router


def parse_last_event_id(request: Request, query: str | None) -> int | None:
    """The event id a client resumes after: the `Last-Event-ID` header (a reconnecting EventSource sends it),
    else the `last_event_id` query parameter; None for neither. ValueError, naming it, when malformed."""
    header = request.headers.get("last-event-id")
    name, value = ("Last-Event-ID", header) if header not in (None, "") else ("last_event_id", query)
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_EVENT_ID:
        raise ValueError(f"{name}: must be the id of an event this stub sent (a whole number), got {value[:40]!r}")
    return int(value)


def _past_latest(after: int, latest: int) -> JSONResponse:
    message = (
        f"Last-Event-ID: {after} is past this stub's newest event ({latest}): it comes from another database;"
        " connect again without it"
    )
    return _error(400, "invalid_input", message)


def _error(status: int, code: str, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    error = {"code": code, "message": message, "retryable": status in (429, 503)}
    return JSONResponse({"error": error}, status_code=status, headers=headers)
