"""Fetch a job's input image and turn it into a trusted PNG on disk.

The URL comes from a client, so it is treated as hostile: only http(s); unless private addresses are
allowed, every address the host resolves to must be public and the connection goes to one of those
vetted addresses (httpx is not left to resolve the name again, which would reopen DNS rebinding);
redirects are followed by hand and every hop is checked again; the body is capped while streaming;
the bytes must decode as PNG, JPEG or WebP within Pillow's pixel limit. What reaches the GPU child is
a PNG this module wrote itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from worker_app_fastwan.errors import JobFailure
from worker_app_fastwan.schema import ErrorCode

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp"}
# Servers that do not know what they serve; the decoder decides instead.
UNTYPED = {"", "application/octet-stream", "binary/octet-stream"}
MAX_REDIRECTS = 3
REDIRECT_CODES = {301, 302, 303, 307, 308}
MAX_CONNECT_S = 10.0
_HEADERS = {"Accept": "image/png, image/jpeg, image/webp;q=0.9", "User-Agent": "fastwan-worker"}


async def download_image(
    url: str,
    dest_dir: Path,
    *,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
    client: httpx.AsyncClient | None = None,
) -> Path:
    """Download `url`, check it, and write it as an RGB PNG into `dest_dir`; returns the PNG's path.

    Raises `JobFailure`: `invalid_input` when the input is at fault, `image_download_failed` otherwise.
    `timeout_s` bounds each network phase and the whole download.
    """
    shown = redact_url(url)
    try:
        data = await asyncio.wait_for(_fetch(url, shown, allow_private, max_bytes, timeout_s, client), timeout_s)
    except asyncio.TimeoutError:
        raise _download_failed(shown, f"timed out after {timeout_s:g} s", retryable=True) from None
    return await asyncio.to_thread(_save_trusted_png, data, Path(dest_dir), shown)


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
    url: str, shown: str, allow_private: bool, max_bytes: int, timeout_s: float, client: httpx.AsyncClient | None
) -> bytes:
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, MAX_CONNECT_S))
    current = _parse(url, shown)
    async with _client_scope(client) as http:
        for _hop in range(MAX_REDIRECTS + 1):
            pinned = None if allow_private else await _vetted_address(current, shown)
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


def _parse(url: str, shown: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise _invalid(shown, "must be an http(s) URL with a host (a redirect may not leave http(s) either)")
    return parsed


async def _resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (getaddrinfo runs in the loop's thread pool)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


async def _vetted_address(url: httpx.URL, shown: str) -> str:
    """One public address of the URL's host to connect to; refuses if ANY of its addresses is not public."""
    host = url.raw_host.decode("ascii")
    try:
        addresses = await _resolve(host, url.port or (443 if url.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise _download_failed(shown, f"cannot resolve host {host}", retryable=exc.errno != socket.EAI_NONAME) from None
    refused = [a for a in addresses if _forbidden(ipaddress.ip_address(a))]
    if refused or not addresses:
        raise _invalid(shown, f"host {host} resolves to a non-public address ({refused[0] if refused else 'none'})")
    return addresses[0]


@contextlib.asynccontextmanager
async def _send(
    http: httpx.AsyncClient, url: httpx.URL, pinned: str | None, timeout: httpx.Timeout
) -> AsyncIterator[httpx.Response]:
    if pinned is None:
        request = http.build_request("GET", url, headers=_HEADERS, timeout=timeout)
    else:
        # Connect to the vetted address; Host and TLS SNI (hence certificate checks) still use the name.
        request = http.build_request(
            "GET",
            url.copy_with(host=pinned),
            headers={**_HEADERS, "Host": url.netloc.decode("ascii")},
            extensions={"sni_hostname": url.raw_host.decode("ascii")},
            timeout=timeout,
        )
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
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(shown, max_bytes)
    body = bytearray()
    async for chunk in response.aiter_bytes():  # decoded bytes, so a gzip bomb hits the cap too
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(shown, max_bytes)
    return bytes(body)


def _save_trusted_png(data: bytes, dest_dir: Path, shown: str) -> Path:
    """Decode within the pixel limit, verify, convert to RGB and write a PNG of our own."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            _check_pixels(probe.size, shown)
            probe.verify()
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            img.load()
            # The PNG drops EXIF, so apply a phone photo's orientation now or it would end up sideways.
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except Image.DecompressionBombError:
        raise _bomb(shown) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _invalid(shown, f"could not be decoded as a PNG/JPEG/WebP image ({type(exc).__name__})") from None
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"input-{uuid.uuid4().hex}.png"
    rgb.save(path, format="PNG", compress_level=1)  # a scratch file: speed over size
    return path


def _check_pixels(size: tuple[int, int], shown: str) -> None:
    """Pillow only warns between MAX_IMAGE_PIXELS and twice that; here that range is an error too.

    Checked by hand rather than with warnings.catch_warnings, which is not thread-safe.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        raise _bomb(shown)


def _invalid(shown: str, what: str) -> JobFailure:
    return JobFailure(ErrorCode.invalid_input, f"image_url: {shown}: {what}", retryable=False)


def _too_large(shown: str, max_bytes: int) -> JobFailure:
    return _invalid(shown, f"is larger than the {max_bytes}-byte limit")


def _bomb(shown: str) -> JobFailure:
    return _invalid(shown, f"has more than {Image.MAX_IMAGE_PIXELS} pixels (decompression-bomb guard)")


def _download_failed(shown: str, what: str, *, retryable: bool) -> JobFailure:
    return JobFailure(ErrorCode.image_download_failed, f"image_url: {shown}: {what}", retryable=retryable)
