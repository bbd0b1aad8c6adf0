"""download_image against a real loopback server."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from helpers_http import serve
from PIL import Image

from worker_app_fastwan import image_input
from worker_app_fastwan.errors import JobFailure
from worker_app_fastwan.image_input import download_image, redact_url
from worker_app_fastwan.schema import ErrorCode

MAX_BYTES = 64 * 1024


def encode(fmt: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 90) if mode == "RGB" else None).save(buf, format=fmt)
    return buf.getvalue()


PNG = encode("PNG", (40, 24), "RGBA")
JPEG = encode("JPEG", (33, 17))
WEBP = encode("WEBP", (16, 48))
BIG_PIXELS = encode("PNG", (64, 64))


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned 90°, so viewers show it 17 wide, 33 high
    buf = io.BytesIO()
    Image.new("RGB", (33, 17)).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def build_app() -> FastAPI:
    app = FastAPI()
    app.state.hits = []
    files = {
        "img.png": (PNG, "image/png"),
        "img.jpg": (JPEG, "image/jpeg; charset=binary"),
        "img.webp": (WEBP, "image/webp"),
        "rotated.jpg": (rotated_jpeg(), "image/jpeg"),
        "untyped.png": (PNG, "application/octet-stream"),
        "untyped.txt": (b"hello, not an image", "application/octet-stream"),
        "truncated.png": (PNG[: len(PNG) // 2], "image/png"),
        "page.html": (b"<html>hi</html>", "text/html; charset=utf-8"),
        "big-pixels.png": (BIG_PIXELS, "image/png"),
        "declared-huge.png": (b"\0" * (MAX_BYTES + 1), "image/png"),
    }

    @app.middleware("http")
    async def record(request: Request, call_next):  # type: ignore[no-untyped-def]
        app.state.hits.append((request.url.path, request.headers.get("host")))
        return await call_next(request)

    @app.get("/f/{name}")
    async def file(name: str) -> Response:
        body, ctype = files[name]
        return Response(body, headers={"content-type": ctype})

    @app.get("/status/{code}")
    async def status(code: int) -> Response:
        return Response(b"nope", status_code=code, media_type="text/plain")

    @app.get("/chunked-huge")
    async def chunked_huge() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"\0" * 8192

        return StreamingResponse(chunks(), media_type="image/png")

    @app.get("/slow")
    async def slow() -> Response:
        await asyncio.sleep(1.5)
        return Response(PNG, media_type="image/png")

    @app.get("/drip")
    async def drip() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for byte in PNG:
                await asyncio.sleep(0.05)  # each read is quick, the whole body is not
                yield bytes([byte])

        return StreamingResponse(chunks(), media_type="image/png")

    @app.get("/redirect/{n}")
    async def redirect(n: int) -> RedirectResponse:
        return RedirectResponse("/f/img.png" if n <= 1 else f"/redirect/{n - 1}", status_code=302)  # n hops

    @app.get("/redirect-to")
    async def redirect_to(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=307)

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FastAPI]]:
    app = build_app()
    with serve(app) as base:
        yield base, app


def fetch(url: str, dest: Path, *, allow_private: bool = True, timeout_s: float = 5.0) -> Path:
    return asyncio.run(download_image(url, dest, allow_private=allow_private, max_bytes=MAX_BYTES, timeout_s=timeout_s))


def failure(url: str, dest: Path, **kwargs: object) -> JobFailure:
    with pytest.raises(JobFailure) as info:
        fetch(url, dest, **kwargs)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("img.png", (40, 24)),
        ("img.jpg", (33, 17)),
        ("img.webp", (16, 48)),
        ("untyped.png", (40, 24)),
        ("rotated.jpg", (17, 33)),
    ],
)
def test_images_become_trusted_rgb_pngs(server, tmp_path: Path, name: str, size: tuple[int, int]) -> None:
    base, _ = server
    path = fetch(f"{base}/f/{name}", tmp_path / "in")
    assert path.parent == tmp_path / "in" and path.suffix == ".png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == size


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/f/page.html", "content-type text/html"),
        ("/f/untyped.txt", "could not be decoded"),
        ("/f/truncated.png", "could not be decoded"),
        ("/f/declared-huge.png", "larger than"),
        ("/chunked-huge", "larger than"),
    ],
)
def test_bad_inputs_are_invalid_input(server, tmp_path: Path, path: str, words: str) -> None:
    base, _ = server
    exc = failure(base + path, tmp_path)
    assert exc.code is ErrorCode.invalid_input and not exc.retryable
    assert exc.message.startswith("image_url: ") and words in exc.message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [3000, 1000])  # 64×64 = 4096 px: warning range, then error range
def test_decompression_bomb_is_refused(server, tmp_path: Path, monkeypatch, limit: int) -> None:
    base, _ = server
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    exc = failure(f"{base}/f/big-pixels.png", tmp_path)
    assert exc.code is ErrorCode.invalid_input and "decompression-bomb" in exc.message


@pytest.mark.parametrize(("code", "retryable"), [(404, False), (403, False), (500, True), (503, True), (429, True)])
def test_http_errors_are_download_failures(server, tmp_path: Path, code: int, retryable: bool) -> None:
    base, _ = server
    exc = failure(f"{base}/status/{code}", tmp_path)
    assert exc.code is ErrorCode.image_download_failed and exc.retryable is retryable
    assert f"HTTP {code}" in exc.message


@pytest.mark.parametrize("path", ["/slow", "/drip"])
def test_slow_servers_time_out_retryably(server, tmp_path: Path, path: str) -> None:
    base, _ = server
    exc = failure(base + path, tmp_path, timeout_s=0.4)
    assert exc.code is ErrorCode.image_download_failed and exc.retryable and "timed out" in exc.message


def test_connection_refused_is_retryable(tmp_path: Path) -> None:
    from helpers_http import free_port

    exc = failure(f"http://127.0.0.1:{free_port()}/x.png", tmp_path)
    assert exc.code is ErrorCode.image_download_failed and exc.retryable


def test_redirects_followed_up_to_three(server, tmp_path: Path) -> None:
    base, _ = server
    assert fetch(f"{base}/redirect/3", tmp_path).exists()
    exc = failure(f"{base}/redirect/4", tmp_path)
    assert exc.code is ErrorCode.image_download_failed and not exc.retryable and "redirects" in exc.message


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_private_hosts_refused_unless_allowed(server, tmp_path: Path, host: str) -> None:
    base, app = server
    url = base.replace("127.0.0.1", host) + "/f/img.png"
    before = len(app.state.hits)
    exc = failure(url, tmp_path, allow_private=False)
    assert exc.code is ErrorCode.invalid_input and not exc.retryable and "non-public address" in exc.message
    assert len(app.state.hits) == before  # refused before connecting
    assert fetch(url, tmp_path, allow_private=True).exists()


def test_redirect_to_loopback_is_refused_at_that_hop(server, tmp_path: Path, monkeypatch) -> None:
    base, app = server
    port = base.rsplit(":", 1)[1]
    # Pretend 127.0.0.1 is public so the first hop passes; the redirect target 127.0.0.2 is not.
    monkeypatch.setattr(image_input, "_forbidden", lambda ip: str(ip) != "127.0.0.1")
    exc = failure(f"{base}/redirect-to?url=http://127.0.0.2:{port}/f/img.png", tmp_path, allow_private=False)
    assert exc.code is ErrorCode.invalid_input and "127.0.0.2" in exc.message
    assert app.state.hits[-1][0] == "/redirect-to"  # the second hop was never requested


def test_every_resolved_address_must_be_public(server, tmp_path: Path, monkeypatch) -> None:
    base, _ = server
    port = base.rsplit(":", 1)[1]

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    monkeypatch.setattr(image_input, "_resolve", resolve)
    exc = failure(f"http://images.test:{port}/f/img.png", tmp_path, allow_private=False)
    assert exc.code is ErrorCode.invalid_input and "10.0.0.7" in exc.message


def test_connection_is_pinned_to_the_vetted_address(server, tmp_path: Path, monkeypatch) -> None:
    base, app = server
    port = base.rsplit(":", 1)[1]

    async def resolve(host: str, port: int) -> list[str]:
        assert host == "images.test"
        return ["127.0.0.1"]

    monkeypatch.setattr(image_input, "_resolve", resolve)
    monkeypatch.setattr(image_input, "_forbidden", lambda ip: False)
    # images.test does not resolve for real: success means httpx did not look the name up again.
    assert fetch(f"http://images.test:{port}/f/img.png", tmp_path, allow_private=False).exists()
    assert app.state.hits[-1] == ("/f/img.png", f"images.test:{port}")


def test_bad_urls_are_invalid_input(tmp_path: Path) -> None:
    for url in ("ftp://example.com/a.png", "file:///etc/passwd", "http:///nohost", "not a url"):
        assert failure(url, tmp_path).code is ErrorCode.invalid_input


def test_messages_never_echo_credentials(server, tmp_path: Path) -> None:
    base, _ = server
    url = base.replace("http://", "http://user:hunter2@") + "/status/404?token=s3cr3t&sig=abc"
    exc = failure(url, tmp_path)
    assert "hunter2" not in exc.message and "s3cr3t" not in exc.message and "/status/404" in exc.message
    assert redact_url("https://u:p@[::1]:8443/a.png?x=1#f") == "https://[::1]:8443/a.png?…"
