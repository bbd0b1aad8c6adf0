"""Hostile request bodies get a clear 4xx before any route sees them (docs/protocol.md, "Hostile bodies").

`BodyGuard` is ASGI middleware for the stub and the worker's queue mode alike. It refuses:
- an ambiguous request with 400 before anything parses it: `Content-Type`, `Content-Length` or
  `Transfer-Encoding` sent more than once, or both framings at once. This middleware and the framework read
  headers differently (the last of a repeated header here, the first there), so a repeated one could show
  each of them a different body type: one body, one reading;
- a compressed body (`Content-Encoding` other than identity) with 415: what is checked must be what is parsed;
- a body that has not arrived within `timeout_s` with 408 (a stalled sender holds no connection for long);
- a body over `max_bytes` (64 KiB) with 413, from the Content-Length header or while reading, so an
  oversize body is never held in memory;
- JSON nested deeper than `max_depth` (32) with 400 (Python's parser would raise RecursionError, a 500);
- a JSON string, key or value, that is not valid Unicode (a lone surrogate such as `"\\ud800"`) with 422
  naming the field: accepted, it would make every later response that shows it fail to encode (a 500);
- `NaN`, `Infinity` or a number too large for a float with 422: no JSON encoder can send them back.
Every body that parses as JSON is checked, whatever its `Content-Type` says (a framework may parse a body
sent as text, or as no type at all, as JSON: the check must not depend on the label). A body that is not
JSON at all is passed on, so each app keeps its own answer to that.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
BODY_TIMEOUT_S = 30.0
# Headers whose repetition makes a request mean different things to different readers.
SINGLE_HEADERS = (b"content-type", b"content-length", b"transfer-encoding", b"content-encoding", b"host")


class BodyRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise `BodyRejected` for JSON too deep, with invalid Unicode or a non-finite number; else return.

    A body that does not parse as JSON passes: that is the app's to answer.
    """
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BodyRejected(400, f"body: JSON nested deeper than {max_depth} levels") from None
    except BodyRejected:
        raise
    except ValueError:
        return
    _walk(data, max_depth)


def check_json_value(data: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """The same rules on data already parsed (a job input that came another way); raises `BodyRejected`."""
    _walk(data, max_depth)


def _no_constant(name: str) -> Any:
    raise BodyRejected(422, f"body: {name} is not a JSON number")


def _walk(data: Any, max_depth: int) -> None:
    """Iterative, so a deep document cannot exhaust the stack here either."""
    stack: list[tuple[Any, str, int]] = [(data, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)) and depth > max_depth:
            raise BodyRejected(400, f"{path or 'body'}: JSON nested deeper than {max_depth} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{_shown(key)}" if path else _shown(key)
                if not _valid_unicode(key):
                    raise BodyRejected(422, f"{child}: the field name is not valid Unicode (lone surrogate)")
                stack.append((item, child, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str) and not _valid_unicode(value):
            raise BodyRejected(422, f"{path or 'body'}: is not valid Unicode (lone surrogate)")
        elif isinstance(value, float) and not math.isfinite(value):
            raise BodyRejected(422, f"{path or 'body'}: number out of range")


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(key: str) -> str:
    """A field name as an error message may show it: escaped if it is not valid Unicode, and short."""
    shown = key.encode("utf-8", "backslashreplace").decode("utf-8")
    return shown if len(shown) <= 64 else shown[:63] + "…"


class BodyGuard:
    """ASGI middleware: unambiguous headers on every request; the size cap, a time limit and `check_json_body`
    on every body, except on `exempt` routes, which read their own body (the headers are still checked)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        max_depth: int = MAX_JSON_DEPTH,
        exempt: tuple[str, ...] = (),
        timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        # Routes that read their own body under their own cap (the stub's image upload: megabytes, not JSON).
        self._exempt = exempt
        self._timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        try:
            headers = check_headers(scope["headers"])
            if scope["path"] in self._exempt:
                raw = None
            else:
                _check_declared_length(headers.get(b"content-length"), self._max_bytes)
                raw = await _read_in_time(receive, self._max_bytes, self._timeout_s)
                if raw:
                    check_json_body(raw, self._max_depth)
        except BodyRejected as exc:
            await _refuse(exc, scope, receive, send)
            return
        await self._app(scope, receive if raw is None else _replay(raw, receive), send)


def check_headers(raw_headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The headers as one dict, once nothing in them is ambiguous; raises `BodyRejected` (400, 415)."""
    headers: dict[bytes, bytes] = {}
    for name, value in raw_headers:
        name = name.lower()
        if name in headers and name in SINGLE_HEADERS:
            raise BodyRejected(400, f"{name.decode('latin-1')}: sent more than once")
        headers[name] = value
    if b"content-length" in headers and b"transfer-encoding" in headers:
        raise BodyRejected(400, "content-length: sent with transfer-encoding")
    if headers.get(b"content-encoding", b"identity").strip().lower() != b"identity":
        raise BodyRejected(415, "content-encoding: send the body uncompressed")
    return headers


def _check_declared_length(value: bytes | None, max_bytes: int) -> None:
    if value is not None and value.isdigit() and int(value) > max_bytes:
        raise BodyRejected(413, f"body: larger than the {max_bytes}-byte limit")


async def _read_in_time(receive: Receive, max_bytes: int, timeout_s: float) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_capped(receive, max_bytes)
    except TimeoutError:
        raise BodyRejected(408, f"body: not received within {timeout_s:g} s") from None


async def _read_capped(receive: Receive, max_bytes: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > max_bytes:
            raise BodyRejected(413, f"body: larger than the {max_bytes}-byte limit")
        if not message.get("more_body", False):
            break
    return bytes(body)


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then passes on to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


async def _refuse(exc: BodyRejected, scope: Scope, receive: Receive, send: Send) -> None:
    body = {"error": {"code": "invalid_input", "message": exc.message, "retryable": False}}
    # 413 and 408 close the connection: the rest of the body may still be on its way.
    headers = {"Connection": "close"} if exc.status in (408, 413) else None
    await JSONResponse(body, status_code=exc.status, headers=headers)(scope, receive, send)
