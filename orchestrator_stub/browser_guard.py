"""What a web page the operator visits can make their browser do to this stub: nothing.

The stub listens on loopback, and the browser of the person at the box runs there too, so any web site can
aim requests at it. ASGI middleware, before every other check:

- **DNS rebinding**: a foreign page that makes its own name resolve to 127.0.0.1 becomes same-origin with the
  stub, with full read access. Its requests still carry its own name in `Host`, so the browser-facing routes
  answer only to allowed names (`StubSettings.allowed_hosts()`: loopback names, STUB_PUBLIC_URL's host,
  STUB_ALLOWED_HOSTS): any other is 421. The worker routes (`/internal/`, their own key), `/health` and
  `/metrics` are left out: workers may reach the stub under any name (a tunnel, a proxy), a page cannot know
  the key, and a scraper asks by address (the queue figures are no secret; STUB_PASSWORD still guards them).
- **Cross-site requests** (a form POST, a `no-cors` fetch; with STUB_PASSWORD set too, since a browser sends
  cached Basic credentials along): a state-changing request is refused with 403 when the browser says it comes
  from another origin (`Sec-Fetch-Site` other than same-origin or none, or an `Origin` other than the stub's
  own), and with 415 when its body is not JSON (`application/json`, which no page can send across origins
  unless the stub allows it, and it never does): a form (form-encoded, multipart, text/plain) or a body of no
  type. The image upload takes the image as itself, of any type but a form's. Scripts (curl, the worker) send
  neither Origin nor Sec-Fetch-Site and pass.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("orchestrator_stub.browser_guard")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = ("/health", "/metrics")  # read-only and scraped by address (a pod's IP), never a page's business
OPEN_PREFIXES = ("/internal/",)
# The body types a page may send to any origin without a CORS preflight ("CORS-safelisted").
FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data", b"text/plain")


def _is_json(content_type: bytes) -> bool:
    """`application/json` or `application/<anything>+json`, as the framework reads JSON bodies."""
    return content_type == b"application/json" or (
        content_type.startswith(b"application/") and content_type.endswith(b"+json")
    )


def host_name(host: bytes) -> str:
    """The name of a `Host` value: no port, no IPv6 brackets, lower case."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class BrowserGuard:
    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str], raw_body_paths: tuple[str, ...] = ()) -> None:
        self._app = app
        self._allowed = allowed_hosts
        self._raw_body_paths = raw_body_paths  # routes whose body is not JSON (the image upload)

    def _allowed_host(self, name: str) -> bool:
        # *.localhost always resolves to loopback (RFC 6761): no one else can point such a name here.
        return name in self._allowed or name.endswith(".localhost")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self._app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.lower(), value)
        refusal = self._refusal(scope["method"], path, headers)
        if refusal is not None:
            status, reason = refusal
            log.warning("browser request refused", extra={"path": path, "method": scope["method"], "reason": reason})
            await JSONResponse({"detail": reason}, status_code=status)(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _refusal(self, method: str, path: str, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        host = host_name(headers.get(b"host", b""))
        if not self._allowed_host(host):
            return 421, "this stub does not answer to that Host name (add it to STUB_ALLOWED_HOSTS if it is yours)"
        if method in SAFE_METHODS:
            return None
        site = headers.get(b"sec-fetch-site", b"").lower()
        if site and site not in (b"same-origin", b"none"):
            return 403, "cross-site requests are refused: use the page this stub serves, or a script"
        origin = headers.get(b"origin")
        if origin is not None and not self._same_origin(origin, headers.get(b"host", b"")):
            return 403, "cross-origin requests are refused: use the page this stub serves, or a script"
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type in FORM_TYPES:
            return 415, "Content-Type: send JSON (application/json), or an image as itself; forms are refused"
        if path in self._raw_body_paths:
            return None
        has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
        if content_type and not _is_json(content_type) or not content_type and has_body:
            return 415, "Content-Type: send the body as JSON (Content-Type: application/json)"
        return None

    def _same_origin(self, origin: bytes, host: bytes) -> bool:
        parts = urlsplit(origin.decode("latin-1").strip())
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.decode("latin-1").strip().lower()
