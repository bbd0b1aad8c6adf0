"""Fetch a job's input image and turn it into a trusted PNG on disk.

The URL comes from a client, so it is treated as hostile: only http(s); unless private addresses are
allowed, every address the host resolves to must be public, IPv4 embedded in IPv6 included (`addresses`),
and the connection goes to one of those vetted addresses (httpx is not left to resolve the name again,
which would reopen DNS rebinding); redirects are followed by hand and every hop is checked again. The
body is asked for and read without content encoding (a response in any other encoding is refused, so a
gzip bomb is never inflated) and capped while streaming. The bytes are decoded in a short-lived process
(`image_decode`) under a pixel cap, a memory cap and a deadline. What reaches the GPU child is a PNG
this worker wrote itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from worker_app_fastwan.core.child_env import minimal_env
from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.edge.addresses import forbidden_address
from worker_app_fastwan.edge.image_decode import REFUSED_EXIT
from worker_app_fastwan.edge.outbound import NonPublicAddress, UnresolvableHost, pinned_request, resolve_host, vet_host

# What a video of at most 1280×1280 can use, with room for a photo to crop from: 4096×4096.
MAX_IMAGE_PIXELS = 16 * 1024 * 1024
IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp"}
# Servers that do not know what they serve; the decoder decides instead.
UNTYPED = {"", "application/octet-stream", "binary/octet-stream"}
MAX_REDIRECTS = 3
REDIRECT_CODES = {301, 302, 303, 307, 308}
MAX_CONNECT_S = 10.0
# identity: the byte cap must hold on the bytes the decoder sees, so nothing is inflated on the way.
_HEADERS = {
    "Accept": "image/png, image/jpeg, image/webp;q=0.9",
    "Accept-Encoding": "identity",
    "User-Agent": "fastwan-worker",
}


async def download_image(
    url: str,
    dest_dir: Path,
    *,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
    max_pixels: int = MAX_IMAGE_PIXELS,
    decode_timeout_s: float | None = None,
    trusted_origin: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> Path:
    """Download `url`, check it, and write it as an RGB PNG into `dest_dir`; returns the PNG's path.

    Raises `JobFailure`: `invalid_input` when the input is at fault, `image_download_failed` otherwise.
    `timeout_s` bounds each network phase and the whole download; `decode_timeout_s` (default: `timeout_s`)
    the decoding. A URL (or redirect hop) on `trusted_origin` (the orchestrator's own base URL, which serves
    uploaded images) may be private.
    """
    shown = redact_url(url)
    trusted = _origin(httpx.URL(trusted_origin)) if trusted_origin else None
    try:
        data = await asyncio.wait_for(
            _fetch(url, shown, allow_private, max_bytes, timeout_s, client, trusted), timeout_s
        )
    except asyncio.TimeoutError:
        raise _download_failed(shown, f"timed out after {timeout_s:g} s", retryable=True) from None
    dest_dir = Path(dest_dir)
    name = uuid.uuid4().hex
    raw, png = dest_dir / f"download-{name}", dest_dir / f"input-{name}.png"
    await asyncio.to_thread(_write_file, raw, data)
    try:
        await _decode(raw, png, max_pixels, decode_timeout_s or timeout_s, shown)
    finally:
        await asyncio.to_thread(raw.unlink, True)
    return png


def redact_url(url: str) -> str:
    """The URL as messages may show it: no userinfo, no query or fragment (both may hold credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "<unparseable URL>"
    shown = f"{parts.scheme}://{netloc}{parts.path}" + ("?…" if parts.query else "")
    return shown if len(shown) <= 200 else shown[:199] + "…"


async def _fetch(
    url: str,
    shown: str,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
    client: httpx.AsyncClient | None,
    trusted: tuple[str, str, int] | None = None,
) -> bytes:
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, MAX_CONNECT_S))
    current = _parse(url, shown)
    async with _client_scope(client) as http:
        for _hop in range(MAX_REDIRECTS + 1):
            open_ok = allow_private or (trusted is not None and _origin(current) == trusted)
            pinned = None if open_ok else await _vetted_address(current, shown)
            with _network_errors(shown):
                async with _send(http, current, pinned, timeout) as response:
                    location = response.headers.get("location")
                    if response.status_code in REDIRECT_CODES and location:
                        current = _parse(str(current.join(location)), shown)
                        continue
                    _check_status(response, shown)
                    _check_content_type(response, shown)
                    return await _read_capped(response, max_bytes, shown)
    raise _download_failed(shown, f"more than {MAX_REDIRECTS} redirects", retryable=False)


@contextlib.asynccontextmanager
async def _client_scope(client: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    if client is not None:
        yield client
        return
    async with httpx.AsyncClient() as own:
        yield own


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port filled in: what "the same origin" compares."""
    return url.scheme, url.host.lower(), url.port or (443 if url.scheme == "https" else 80)


def _parse(url: str, shown: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise _invalid(shown, "must be an http(s) URL with a host (a redirect may not leave http(s) either)")
    return parsed


_resolve = resolve_host  # module names the tests replace


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return forbidden_address(ip)


async def _vetted_address(url: httpx.URL, shown: str) -> str:
    """One public address of the URL's host to connect to (`outbound.vet_host`, the stub's webhooks' rule too)."""
    try:
        return await vet_host(url, resolve=_resolve, forbidden=_forbidden)
    except UnresolvableHost as exc:
        raise _download_failed(shown, str(exc), retryable=exc.temporary) from None
    except NonPublicAddress as exc:
        raise _invalid(shown, str(exc)) from None


@contextlib.asynccontextmanager
async def _send(
    http: httpx.AsyncClient, url: httpx.URL, pinned: str | None, timeout: httpx.Timeout
) -> AsyncIterator[httpx.Response]:
    request = pinned_request(http, "GET", url, pinned, headers=_HEADERS, timeout=timeout)
    response = await http.send(request, stream=True, follow_redirects=False)
    try:
        yield response
    finally:
        await response.aclose()


@contextlib.contextmanager
def _network_errors(shown: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise _download_failed(shown, f"timed out ({type(exc).__name__})", retryable=True) from None
    except httpx.TransportError as exc:
        raise _download_failed(shown, f"network error ({type(exc).__name__})", retryable=True) from None


def _check_status(response: httpx.Response, shown: str) -> None:
    if response.is_success:
        return
    code = response.status_code
    retryable = code in (408, 429) or code >= 500
    raise _download_failed(shown, f"server answered HTTP {code}", retryable=retryable)


def _check_content_type(response: httpx.Response, shown: str) -> None:
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in IMAGE_TYPES and media not in UNTYPED:
        raise _invalid(shown, f"is not a PNG/JPEG/WebP image (content-type {media[:60]})")


async def _read_capped(response: httpx.Response, max_bytes: int, shown: str) -> bytes:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Asked for identity; inflating what came instead would let 1 KB on the wire become gigabytes.
        raise _invalid(shown, f"was sent with Content-Encoding {encoding[:40]}; only unencoded images are accepted")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(shown, max_bytes)
    body = bytearray()
    async for chunk in response.aiter_raw():  # the bytes as sent: nothing is decoded on the way
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(shown, max_bytes)
    return bytes(body)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def _decode(src: Path, dest: Path, max_pixels: int, timeout_s: float, shown: str) -> None:
    """Run `image_decode` on `src`; a refusal, a crash or the deadline is the image's fault (invalid_input)."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker_app_fastwan.edge.image_decode",
        str(src),
        str(dest),
        str(max_pixels),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=minimal_env(os.environ),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise _invalid(shown, f"took longer than {timeout_s:g} s to decode") from None
    except asyncio.CancelledError:
        proc.kill()
        raise
    reason = out.decode("utf-8", "replace").strip()[:300]
    if proc.returncode == REFUSED_EXIT and reason:
        raise _invalid(shown, reason)
    if proc.returncode != 0:
        elapsed = time.monotonic() - started
        raise _invalid(
            shown, f"could not be decoded (the decoder stopped with code {proc.returncode} after {elapsed:.1f} s)"
        )


def _invalid(shown: str, what: str) -> JobFailure:
    return JobFailure(ErrorCode.invalid_input, f"image_url: {shown}: {what}", retryable=False)


def _too_large(shown: str, max_bytes: int) -> JobFailure:
    return _invalid(shown, f"is larger than the {max_bytes}-byte limit")


def _download_failed(shown: str, what: str, *, retryable: bool) -> JobFailure:
    return JobFailure(ErrorCode.image_download_failed, f"image_url: {shown}: {what}", retryable=retryable)
