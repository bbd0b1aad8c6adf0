"""The X-Internal-Api-Key check on every /internal/ route.

It is ASGI middleware rather than a route dependency so that a bad key is refused before the body is
read or validated: a 401 never depends on the body, and nothing changes behind it. The key is never logged.
"""

from __future__ import annotations

import hmac
import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("orchestrator_stub.auth")

HEADER = b"x-internal-api-key"


class InternalKeyMiddleware:
    def __init__(self, app: ASGIApp, key: str, prefix: str = "/internal/") -> None:
        self._app = app
        self._key = key.encode("utf-8")
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self._prefix):
            given = dict(scope["headers"]).get(HEADER)
            if given is None or not hmac.compare_digest(given, self._key):
                reason = "missing" if given is None else "wrong"
                log.warning("internal call refused", extra={"path": scope["path"], "reason": f"{reason} api key"})
                response = JSONResponse({"detail": "missing or wrong X-Internal-Api-Key"}, status_code=401)
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)
