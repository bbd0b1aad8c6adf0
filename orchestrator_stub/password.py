"""STUB_PASSWORD: HTTP Basic auth in front of the page and the /v1 API, when the setting is set.

Any user name is accepted; only the password counts, compared in constant time. A refusal is a 401 with
`WWW-Authenticate: Basic`, so a browser asks for it. Left outside: `/health` (probes), the worker-facing
`/internal/` routes (they have their own key) and `/uploads/` (the worker fetches input images from there
without credentials; each name is the SHA-256 of the image, so only someone who has it can name it).
Like `auth.InternalKeyMiddleware` it is ASGI middleware, so a refusal never depends on the body, and
guessing is slowed the same way (`throttle.GuessThrottle`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging

from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator_stub.auth import client_of, too_many_guesses
from orchestrator_stub.throttle import GuessThrottle

log = logging.getLogger("orchestrator_stub.password")

OPEN_PATHS = ("/health",)
OPEN_PREFIXES = ("/internal/", "/uploads/")
CHALLENGE = 'Basic realm="orchestrator_stub", charset="UTF-8"'
MESSAGE = "this stub needs its STUB_PASSWORD (HTTP Basic, any user name)"
REFUSED_HTML = (
    "<!doctype html><title>Password needed</title><h1>Password needed</h1>"
    "<p>This studio is protected by the stub's <code>STUB_PASSWORD</code>. Reload the page and enter it"
    " (any user name will do).</p>"
)


def is_open(path: str) -> bool:
    """Paths that never ask for STUB_PASSWORD."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def basic_password(header: bytes | None) -> bytes | None:
    """The password of an `Authorization: Basic …` header, or None when absent or malformed."""
    if header is None:
        return None
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    _user, colon, password = decoded.partition(b":")
    return password if colon else None


class PasswordMiddleware:
    def __init__(self, app: ASGIApp, password: str, throttle: GuessThrottle | None = None) -> None:
        self._app = app
        self._password = password.encode("utf-8")
        self._throttle = throttle or GuessThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_open(scope["path"]):
            given = basic_password(dict(scope["headers"]).get(b"authorization"))
            client = client_of(scope)
            if given is not None and (wait := self._throttle.retry_after(client, given)) is not None:
                reason = "too many wrong passwords"
                log.warning("page or API call refused", extra={"path": scope["path"], "reason": reason})
                await too_many_guesses(wait, "passwords")(scope, receive, send)
                return
            # compare_digest on equal-length digests: neither the password nor its length leaks by timing.
            if given is None or not hmac.compare_digest(_digest(given), _digest(self._password)):
                if given is not None:
                    self._throttle.failed(client, given)
                log.info("page or API call refused", extra={"path": scope["path"], "reason": "STUB_PASSWORD"})
                await _refusal(scope)(scope, receive, send)
                return
        await self._app(scope, receive, send)


def _refusal(scope: Scope) -> Response:
    """401 with the Basic challenge; a browser that was asked and cancelled shows the HTML one."""
    headers = {"WWW-Authenticate": CHALLENGE}
    if b"text/html" in dict(scope["headers"]).get(b"accept", b""):
        return HTMLResponse(REFUSED_HTML, status_code=401, headers=headers)
    return JSONResponse({"detail": MESSAGE}, status_code=401, headers=headers)


def warn_if_open(host: str, password: str | None) -> None:
    """A stub listening beyond loopback without STUB_PASSWORD lets anyone who reaches it spend the GPU."""
    if password is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "the page and the /v1 API have no password while listening beyond loopback: set STUB_PASSWORD",
            extra={"host": host},
        )


def _digest(value: bytes) -> bytes:
    return hmac.digest(b"orchestrator_stub.password", value, "sha256")
