"""Input images for image-to-video jobs: `POST /v1/uploads` stores one, `GET /uploads/{name}` serves it.

The page sends the file as the raw request body (the stub's 64 KiB cap on other bodies does not apply
here). What an upload may cost is bounded before and while it is read:
- at most UPLOAD_MAX_CONCURRENT uploads at a time, and per client (IP address) at most
  UPLOAD_CLIENT_MAX_BYTES received per UPLOAD_QUOTA_WINDOW_S, and UPLOAD_DIR at most UPLOAD_TOTAL_MAX_BYTES:
  past any of them, 429 with a message saying which;
- the body goes to a temporary file as it arrives (memory stays flat, however many bytes), 413 past
  UPLOAD_MAX_BYTES, and 408 when it has not all arrived within UPLOAD_TIMEOUT_S (a stalled sender is cut off);
- the file is checked by decoding it whole (one decode at a time, so decoding's memory is bounded too):
  Pillow must decode it as PNG, JPEG or WebP within the worker's pixel limit, and nothing may follow the
  image's own end (`image_check.py`).
The file is stored under UPLOAD_DIR as `<sha256>.<ext>` (fsynced before the answer, so an accepted upload
survives a crash), and the answer's `url` is what goes into the job's `image_url`: it starts with the stub's
own URL as workers reach it (STUB_PUBLIC_URL), the one private origin a worker trusts for image downloads (its
ORCHESTRATOR_BASE_URL).

`/uploads/` needs no STUB_PASSWORD (the worker has none): a name is the image's SHA-256, so only someone
who already has the image can name it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import io
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError

from orchestrator_stub.auth import client_of
from orchestrator_stub.image_check import trailing_bytes
from worker_app_fastwan.core.durable import write_durably
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.edge.image import MAX_IMAGE_PIXELS

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
NAME_PATTERN = r"^[0-9a-f]{64}\.(png|jpg|webp)$"
UPLOAD_PATH = "/v1/uploads"
INCOMING = ".incoming"  # bodies on their way in, under UPLOAD_DIR (same file system: the final rename is atomic)
MAX_CLIENTS_TRACKED = 10_000


class UploadRefused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def response(self) -> JSONResponse:
        error = {"code": ErrorCode.invalid_input.value, "message": self.message, "retryable": self.status in (408, 429)}
        headers = dict(self.headers or {})
        if self.status in (408, 413):
            headers["Connection"] = "close"  # the rest of the body may still be on its way
        return JSONResponse({"error": error}, status_code=self.status, headers=headers)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 20 * 1024 * 1024
    total_max_bytes: int = 2 * 1024**3
    client_max_bytes: int = 500 * 1024**2
    quota_window_s: float = 3600.0
    max_concurrent: int = 4
    timeout_s: float = 60.0


class UploadQuota:
    """Uploads in flight, bytes received per client in the window, bytes kept in the folder. Thread-safe."""

    def __init__(self, folder: Path, limits: UploadLimits) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._in_flight = 0
        self._received: collections.OrderedDict[str, collections.deque[tuple[float, int]]] = collections.OrderedDict()
        self.stored = sum(p.stat().st_size for p in folder.glob("*.*") if p.is_file()) if folder.is_dir() else 0

    @contextlib.contextmanager
    def slot(self, client: str, declared: int | None) -> Iterator[None]:
        """One upload's place; raises `UploadRefused` (429) when too many are in flight, or the client's quota
        is spent."""
        limits = self._limits
        with self._lock:
            if self._in_flight >= limits.max_concurrent:
                raise _busy(f"{limits.max_concurrent} uploads are in progress already (UPLOAD_MAX_CONCURRENT)", 5)
            if self._used(client) + (declared or 0) > limits.client_max_bytes:
                raise _busy(
                    f"this address sent {limits.client_max_bytes} bytes of uploads within"
                    f" {limits.quota_window_s:g} s already (UPLOAD_CLIENT_MAX_BYTES)",
                    int(limits.quota_window_s),
                )
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def received(self, client: str, size: int) -> None:
        """Count `size` bytes against the client's quota (as they arrive: a refused upload costs its bytes too)."""
        with self._lock:
            self._window(client).append((time.monotonic(), size))
            if self._used(client) > self._limits.client_max_bytes:
                raise _busy(f"this address is over UPLOAD_CLIENT_MAX_BYTES ({self._limits.client_max_bytes})", 60)

    def kept(self, size: int) -> None:
        """Count a new file against UPLOAD_TOTAL_MAX_BYTES (checked here, once it is known the image is new: the
        same image again stores nothing); raises `UploadRefused` (429) when the folder would pass it."""
        with self._lock:
            if self.stored + size > self._limits.total_max_bytes:
                raise _busy(
                    f"the upload folder is full ({self._limits.total_max_bytes} bytes, UPLOAD_TOTAL_MAX_BYTES):"
                    " delete old images from UPLOAD_DIR",
                    3600,
                )
            self.stored += size

    def _window(self, client: str) -> collections.deque[tuple[float, int]]:
        window = self._received.setdefault(client, collections.deque())
        self._received.move_to_end(client)
        while len(self._received) > MAX_CLIENTS_TRACKED:
            self._received.popitem(last=False)
        return window

    def _used(self, client: str) -> int:
        window = self._received.get(client)
        if window is None:
            return 0
        cutoff = time.monotonic() - self._limits.quota_window_s
        while window and window[0][0] < cutoff:
            window.popleft()
        return sum(size for _, size in window)


def _busy(message: str, retry_after_s: int) -> UploadRefused:
    return UploadRefused(429, f"image: {message}", headers={"Retry-After": str(max(1, retry_after_s))})


def build_router(upload_dir: Path, limits: UploadLimits, public_url: str) -> APIRouter:
    router = APIRouter(tags=["uploads"])
    quota = UploadQuota(upload_dir, limits)
    decoding = threading.Lock()  # one decode at a time: a 16-megapixel image takes ~64 MB while it decodes

    @router.post(UPLOAD_PATH, status_code=201, responses={408: {}, 413: {}, 422: {}, 429: {}})
    async def upload(request: Request) -> JSONResponse:
        """The request body is the image itself (PNG, JPEG or WebP)."""
        client = client_of(request.scope)
        try:
            declared = _declared_length(request, limits.max_bytes)
            with quota.slot(client, declared):
                async with _incoming(upload_dir) as tmp:
                    size = await read_to_file(request, tmp, limits, lambda n: quota.received(client, n))
                    stored = await asyncio.to_thread(store_image, tmp, size, upload_dir, decoding, quota)
        except UploadRefused as exc:
            return exc.response()
        return JSONResponse(stored | {"url": f"{public_url}/uploads/{stored['name']}"}, status_code=201)

    @router.get("/uploads/{name}", responses={404: {}})
    def serve(name: str = PathParam(pattern=NAME_PATTERN)) -> Response:
        path = upload_dir / name
        if not path.is_file():
            return JSONResponse({"detail": f"unknown upload {name}"}, status_code=404)
        return FileResponse(
            path,
            media_type=MEDIA_TYPES[name.rsplit(".", 1)[1]],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=31536000, immutable"},
        )

    return router


def _declared_length(request: Request, max_bytes: int) -> int | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    return int(declared) if declared.isdigit() else None


def _too_large(max_bytes: int) -> UploadRefused:
    return UploadRefused(413, f"image: larger than the {max_bytes}-byte limit (UPLOAD_MAX_BYTES)")


@contextlib.asynccontextmanager
async def _incoming(upload_dir: Path) -> AsyncIterator[Path]:
    """A temporary file for one body, removed afterwards whatever happens (a kept image is a copy by then)."""
    path = await asyncio.to_thread(_new_temp, upload_dir / INCOMING)
    try:
        yield path
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


def _new_temp(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix="body.")
    os.close(fd)
    return Path(name)


async def read_to_file(request: Request, dest: Path, limits: UploadLimits, on_bytes: Any) -> int:
    """Stream the body into `dest`: 413 past `max_bytes` (never read further), 408 past `timeout_s`."""
    size = 0
    try:
        async with asyncio.timeout(limits.timeout_s):
            with dest.open("wb") as out:  # opening a file mkstemp just made: nothing to wait for
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limits.max_bytes:
                        raise _too_large(limits.max_bytes)
                    on_bytes(len(chunk))
                    await asyncio.to_thread(out.write, chunk)  # a busy disk must not stall the event loop
    except TimeoutError:
        raise UploadRefused(408, f"image: not received within {limits.timeout_s:g} s (UPLOAD_TIMEOUT_S)") from None
    if size == 0:
        raise UploadRefused(422, "image: the request body is empty (send the image file itself)")
    return size


def store_image(
    path: Path, size: int, upload_dir: Path, decoding: threading.Lock, quota: UploadQuota
) -> dict[str, Any]:
    """Check the file is an image and keep it as `<sha256>.<ext>`; returns its name, size and format."""
    data = path.read_bytes()
    with decoding:
        fmt, width, height = identify(data)
    name = f"{hashlib.sha256(data).hexdigest()}.{EXTENSIONS[fmt]}"
    dest = upload_dir / name
    if not dest.exists():  # the same image again is the same file
        quota.kept(size)
        write_durably(dest, data, tmp_prefix=".upload.")
    return {"name": name, "bytes": size, "format": fmt.lower(), "width": width, "height": height}


def identify(data: bytes) -> tuple[str, int, int]:
    """The image's format and size, from decoding it whole; refuses anything but a clean PNG/JPEG/WebP within
    the pixel limit (a truncated file, bytes after the image's end)."""
    try:
        with Image.open(io.BytesIO(data), formats=tuple(EXTENSIONS)) as img:
            fmt, (width, height) = str(img.format), img.size
            if width * height > MAX_IMAGE_PIXELS:  # the worker's own limit: it would refuse the job
                raise UploadRefused(422, f"image: more than {MAX_IMAGE_PIXELS} pixels ({width}x{height})")
            img.load()  # every pixel: a file that only starts like an image fails here
        extra = trailing_bytes(fmt, data)
    except UploadRefused:
        raise
    except Image.DecompressionBombError:
        raise UploadRefused(422, "image: too many pixels (decompression-bomb guard)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadRefused(422, f"image: not a PNG, JPEG or WebP image ({type(exc).__name__})") from None
    if extra:
        raise UploadRefused(422, f"image: {extra} bytes follow the end of the {fmt} image")
    return fmt, width, height
