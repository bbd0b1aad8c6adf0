"""The X-Internal-Api-Key check on every /internal/ route.

It is ASGI middleware rather than a route dependency so that a bad key is refused before the body is
read or validated: a 401 never depends on the body, and nothing changes behind it. The key is never logged.
Guessing is slowed per client (`throttle.GuessThrottle`): past a few distinct wrong keys, 429 for a while.
"""

from __future__ import annotations

import hmac
import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator_stub.throttle import GuessThrottle, retry_after_header

log = logging.getLogger("orchestrator_stub.auth")

HEADER = b"x-internal-api-key"


def client_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def too_many_guesses(wait_s: float, what: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"too many wrong {what} from this address: try again in {retry_after_header(wait_s)} s"},
        status_code=429,
        headers={"Retry-After": retry_after_header(wait_s)},
    )


class InternalKeyMiddleware:
    def __init__(
        self, app: ASGIApp, key: str, prefix: str = "/internal/", throttle: GuessThrottle | None = None
    ) -> None:
        self._app = app
        self._key = key.encode("utf-8")
        self._prefix = prefix
        self._throttle = throttle or GuessThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self._prefix):
            given = dict(scope["headers"]).get(HEADER)
            client = client_of(scope)
            if given is not None and (wait := self._throttle.retry_after(client, given)) is not None:
                log.warning("internal call refused", extra={"path": scope["path"], "reason": "too many wrong keys"})
                await too_many_guesses(wait, "X-Internal-Api-Key values")(scope, receive, send)
                return
            if given is None or not hmac.compare_digest(given, self._key):
                reason = "missing" if given is None else "wrong"
                if given is not None:
                    self._throttle.failed(client, given)
                log.warning("internal call refused", extra={"path": scope["path"], "reason": f"{reason} api key"})
                response = JSONResponse({"detail": "missing or wrong X-Internal-Api-Key"}, status_code=401)
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)
