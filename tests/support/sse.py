"""Reading a server-sent event stream in tests, line by line, as the SSE specification parses it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Sse:
    event: str
    data: str
    id: str | None = None
    comments: list[str] = field(default_factory=list)  # the comment lines (keep-alives) received before it

    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """Events of an open streaming response, one at a time; `next()` raises StopIteration when the stream ends."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()
        self.comments: list[str] = []  # every comment line so far
        self.deadline = float("inf")  # keep-alives keep a stream that never ends busy: `rest` bounds it

    def __iter__(self) -> Iterator[Sse]:
        return self

    def __next__(self) -> Sse:
        fields: dict[str, list[str]] = {}
        comments: list[str] = []
        for line in self._lines:
            if time.monotonic() > self.deadline:
                raise TimeoutError("the stream did not end in time")
            if line == "":
                if fields:
                    data = "\n".join(fields.get("data", []))
                    ids = fields.get("id")
                    return Sse(fields.get("event", ["message"])[-1], data, ids[-1] if ids else None, comments)
                continue
            if line.startswith(":"):
                comments.append(line[1:].strip())
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        raise StopIteration

    def take(self, n: int) -> list[Sse]:
        return [next(self) for _ in range(n)]

    def rest(self, timeout_s: float = 5.0) -> list[Sse]:
        """Every event until the stream ends, which must be within `timeout_s`."""
        self.deadline = time.monotonic() + timeout_s
        try:
            return list(self)
        finally:
            self.deadline = float("inf")
