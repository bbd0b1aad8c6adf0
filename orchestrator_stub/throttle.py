"""A growing delay per client after wrong guesses of a secret (STUB_PASSWORD, INTERNAL_API_KEY).

Each client (its IP address) may get `free` distinct wrong secrets wrong; each one after that locks it out
for a doubling time (1 s, 2 s, 4 s, … up to `max_delay_s`). While locked out, every attempt of that client
with a secret it has not already been told is wrong gets 429 with `Retry-After`, unchecked, the right one
included: checking it would tell a guesser running many requests at once which one was right.

Only *distinct* wrong secrets count: a worker or a browser that keeps sending the same stale key or password
guesses nothing, and must not lock out the other workers on its address (a box's workers share 127.0.0.1).
It keeps a short digest of each recent wrong secret per client, never the secret. Memory is bounded: at most
`max_clients` clients (the least recently failing are forgotten first) and `MAX_REMEMBERED` digests each; a
client with no failure for `forget_after_s` starts afresh.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_REMEMBERED = 32


@dataclass
class _Client:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0
    wrong: OrderedDict[bytes, None] = field(default_factory=OrderedDict)


class GuessThrottle:
    def __init__(
        self,
        free: int = 5,
        max_delay_s: float = 300.0,
        *,
        forget_after_s: float = 3600.0,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = free
        self._max_delay_s = max_delay_s
        self._forget_after_s = max(forget_after_s, max_delay_s)
        self._max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str, secret: bytes) -> float | None:
        """Seconds this client must wait before `secret` is checked, or None: check it now."""
        with self._lock:
            state = self._state(client)
            if state is None or _digest(secret) in state.wrong:
                return None
            wait = state.locked_until - self._clock()
            return wait if wait > 0 else None

    def known_wrong(self, client: str, secret: bytes) -> bool:
        with self._lock:
            state = self._state(client)
            return state is not None and _digest(secret) in state.wrong

    def failed(self, client: str, secret: bytes) -> None:
        """`secret` was wrong; a new wrong one counts, and past the free ones locks the client out a while."""
        now = self._clock()
        digest = _digest(secret)
        with self._lock:
            state = self._state(client) or _Client()
            self._clients[client] = state
            self._clients.move_to_end(client)
            while len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
            state.last_failure = now
            if digest in state.wrong:
                return
            state.wrong[digest] = None
            while len(state.wrong) > MAX_REMEMBERED:
                state.wrong.popitem(last=False)
            state.failures += 1
            if state.failures > self._free:
                delay = min(self._max_delay_s, 2.0 ** min(state.failures - self._free - 1, 62))
                state.locked_until = now + delay

    def _state(self, client: str) -> _Client | None:
        state = self._clients.get(client)
        if state is not None and self._clock() - state.last_failure > self._forget_after_s:
            del self._clients[client]
            return None
        return state


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(b"orchestrator_stub.throttle" + secret).digest()[:16]


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
