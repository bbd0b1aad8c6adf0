"""Input images for image-to-video jobs: `POST /v1/uploads` stores one, `GET /uploads/{name}` serves it.

The page sends the file as the raw request body (the stub's 64 KiB cap on other bodies does not apply
here). The stub checks the size while reading (413 past UPLOAD_MAX_BYTES) and the type by content, never
by name or header: Pillow must identify it as PNG, JPEG or WebP within the worker's pixel limit (from its
header; the worker decodes it in its own sandbox). The file is stored under UPLOAD_DIR as
`<sha256>.<ext>` (fsynced before the answer, so an accepted upload survives a crash), and the answer's
`url` is what goes into the job's `image_url`: it starts with the stub's own URL as workers reach it
(STUB_PUBLIC_URL), the one private origin a worker trusts for image downloads (its ORCHESTRATOR_BASE_URL).

`/uploads/` needs no STUB_PASSWORD (the worker has none): a name is the image's SHA-256, so only someone
who already has the image can name it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError

from worker_app_fastwan.core.durable import write_durably
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.edge.image import MAX_IMAGE_PIXELS

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
NAME_PATTERN = r"^[0-9a-f]{64}\.(png|jpg|webp)$"
UPLOAD_PATH = "/v1/uploads"


class UploadRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        error = {"code": ErrorCode.invalid_input.value, "message": self.message, "retryable": False}
        return JSONResponse({"error": error}, status_code=self.status)


def build_router(upload_dir: Path, max_bytes: int, public_url: str) -> APIRouter:
    router = APIRouter(tags=["uploads"])

    @router.post(UPLOAD_PATH, status_code=201, responses={413: {}, 422: {}})
    async def upload(request: Request) -> JSONResponse:
        """The request body is the image itself (PNG, JPEG or WebP)."""
        try:
            data = await read_capped(request, max_bytes)
            stored = await asyncio.to_thread(store_image, data, upload_dir)
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


async def read_capped(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `max_bytes` (never read past it)."""
    too_large = UploadRefused(413, f"image: larger than the {max_bytes}-byte limit (UPLOAD_MAX_BYTES)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    if not body:
        raise UploadRefused(422, "image: the request body is empty (send the image file itself)")
    return bytes(body)


def store_image(data: bytes, upload_dir: Path) -> dict[str, Any]:
    """Check `data` is an image and write it as `<sha256>.<ext>`; returns its name, size and format."""
    fmt, width, height = identify(data)
    name = f"{hashlib.sha256(data).hexdigest()}.{EXTENSIONS[fmt]}"
    path = upload_dir / name
    if not path.exists():  # the same image again is the same file
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, data, tmp_prefix=".upload.")
    return {"name": name, "bytes": len(data), "format": fmt.lower(), "width": width, "height": height}


def identify(data: bytes) -> tuple[str, int, int]:
    """The image's format and size, from its content; refuses anything but PNG/JPEG/WebP within the pixel limit."""
    try:
        with Image.open(io.BytesIO(data), formats=tuple(EXTENSIONS)) as img:
            fmt, (width, height) = str(img.format), img.size
            if width * height > MAX_IMAGE_PIXELS:  # the worker's own limit: it would refuse the job
                raise UploadRefused(422, f"image: more than {MAX_IMAGE_PIXELS} pixels ({width}x{height})")
            img.verify()
    except UploadRefused:
        raise
    except Image.DecompressionBombError:
        raise UploadRefused(422, "image: too many pixels (decompression-bomb guard)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadRefused(422, f"image: not a PNG, JPEG or WebP image ({type(exc).__name__})") from None
    return fmt, width, height
