"""download_image against a real loopback server."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from PIL import Image
from support.http_servers import serve

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.edge import image as image_input
from worker_app_fastwan.edge.addresses import forbidden_address
from worker_app_fastwan.edge.image import download_image, redact_url

MAX_BYTES = 64 * 1024


def encode(fmt: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 90) if mode == "RGB" else None).save(buf, format=fmt)
    return buf.getvalue()


PNG = encode("PNG", (40, 24), "RGBA")
JPEG = encode("JPEG", (33, 17))
WEBP = encode("WEBP", (16, 48))
BIG_PIXELS = encode("PNG", (64, 64))
HUGE_PIXELS = encode("PNG", (9000, 9000), "1")  # 81 MP in about 10 KB: accepted before the pixel cap
BOMB_DECODED_MB = 256


def gzip_bomb() -> bytes:
    """`Content-Encoding: gzip, gzip` of BOMB_DECODED_MB MB of zeros: under a kilobyte on the wire."""
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    megabyte = b"\0" * (1 << 20)
    layer = b"".join(inner.compress(megabyte) for _ in range(BOMB_DECODED_MB)) + inner.flush()
    return gzip.compress(layer, 9)


def many_scans_jpeg(extra_scans: int) -> bytes:
    """A valid 4096×4096 progressive JPEG (within the pixel cap) with one small AC scan repeated
    `extra_scans` times: each costs the decoder a pass over every block, a few ms here, so a file of a few
    hundred KB takes many seconds to decode (libjpeg only warns about the bogus progression)."""
    buf = io.BytesIO()
    Image.new("RGB", (4096, 4096), (120, 30, 200)).save(buf, "JPEG", progressive=True, quality=50)
    data, segments, i = buf.getvalue(), [], 2
    while data[i + 1] != 0xD9:
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if data[i + 1] == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        segments.append(data[i:end])
        i = end
    scans = [n for n, s in enumerate(segments) if s[1] == 0xDA]
    repeated = segments[scans[1] - 1] + segments[scans[1]]  # its Huffman table, then the small scan
    return data[:2] + b"".join(segments) + repeated * extra_scans + b"\xff\xd9"


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned 90°, so viewers show it 17 wide, 33 high
    buf = io.BytesIO()
    Image.new("RGB", (33, 17)).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def build_app() -> FastAPI:
    app = FastAPI()
    app.state.hits = []
    app.state.encodings = []
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
        "huge-pixels.png": (HUGE_PIXELS, "image/png"),
        "many-scans.jpg": (many_scans_jpeg(4000), "image/jpeg"),
    }
    bomb = gzip_bomb()

    @app.middleware("http")
    async def record(request: Request, call_next):  # type: ignore[no-untyped-def]
        app.state.hits.append((request.url.path, request.headers.get("host")))
        app.state.encodings.append(request.headers.get("accept-encoding"))
        return await call_next(request)

    @app.get("/bomb.png")
    async def bomb_png() -> Response:
        # Sent whatever the client asked for, as a hostile server would.
        return Response(bomb, headers={"content-type": "image/png", "content-encoding": "gzip, gzip"})

    @app.get("/gzipped.png")
    async def gzipped_png() -> Response:
        return Response(gzip.compress(PNG), headers={"content-type": "image/png", "content-encoding": "gzip"})

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


def fetch(url: str, dest: Path, *, allow_private: bool = True, timeout_s: float = 10.0, **kwargs: object) -> Path:
    return asyncio.run(
        download_image(url, dest, allow_private=allow_private, max_bytes=MAX_BYTES, timeout_s=timeout_s, **kwargs)  # type: ignore[arg-type]
    )


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


def test_pixel_cap_refuses_a_small_file_of_many_pixels(server, tmp_path: Path) -> None:
    base, _ = server
    assert len(HUGE_PIXELS) < MAX_BYTES  # small on the wire: only the pixel cap can catch it
    exc = failure(f"{base}/f/huge-pixels.png", tmp_path)
    assert exc.code is ErrorCode.invalid_input and not exc.retryable
    assert "9000×9000" in exc.message and f"{image_input.MAX_IMAGE_PIXELS}-pixel limit" in exc.message
    assert list(tmp_path.iterdir()) == []  # neither the download nor a PNG is left behind


@pytest.mark.parametrize("max_pixels", [4096, 4095])  # 64×64 = 4096 px: at the cap, then one over
def test_pixel_cap_is_exact(server, tmp_path: Path, max_pixels: int) -> None:
    base, _ = server
    if max_pixels >= 64 * 64:
        assert fetch(f"{base}/f/big-pixels.png", tmp_path, max_pixels=max_pixels).exists()
    else:
        exc = failure(f"{base}/f/big-pixels.png", tmp_path, max_pixels=max_pixels)
        assert exc.code is ErrorCode.invalid_input and "pixel limit" in exc.message


def test_a_jpeg_slow_to_decode_is_killed_at_the_deadline(server, tmp_path: Path) -> None:
    base, _ = server
    url = f"{base}/f/many-scans.jpg"
    start = time.monotonic()
    with pytest.raises(JobFailure) as info:
        asyncio.run(
            download_image(url, tmp_path, allow_private=True, max_bytes=1 << 20, timeout_s=20, decode_timeout_s=2)
        )
    elapsed = time.monotonic() - start
    assert info.value.code is ErrorCode.invalid_input and "took longer than 2 s to decode" in info.value.message
    assert elapsed < 10, elapsed  # decoded to the end it takes about 30 s on 2 busy cores
    assert list(tmp_path.iterdir()) == []


def test_decoding_is_killed_at_its_deadline(server, tmp_path: Path) -> None:
    base, _ = server
    exc = failure(f"{base}/f/img.png", tmp_path, decode_timeout_s=0.001)
    assert exc.code is ErrorCode.invalid_input and "to decode" in exc.message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["/bomb.png", "/gzipped.png"])
def test_encoded_bodies_are_refused_not_inflated(server, tmp_path: Path, path: str) -> None:
    base, app = server
    exc = failure(base + path, tmp_path)
    assert exc.code is ErrorCode.invalid_input and not exc.retryable and "Content-Encoding gzip" in exc.message
    assert app.state.encodings[-1] == "identity"  # asked for unencoded bytes


RSS_PROBE = """
import asyncio, json, resource, sys, tempfile
from worker_app_fastwan.edge.image import download_image
from worker_app_fastwan.core.errors import JobFailure
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    asyncio.run(download_image(sys.argv[1], tempfile.mkdtemp(), allow_private=True, max_bytes=20 << 20, timeout_s=20))
    outcome = "accepted"
except JobFailure as exc:
    outcome = exc.code.value
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "growth_mb": (after - before) / 1024}))
"""


def test_gzip_bomb_does_not_grow_the_process(server) -> None:
    """The bomb is downloaded by a fresh process, whose peak RSS is measured before and after."""
    base, _ = server
    done = subprocess.run([sys.executable, "-c", RSS_PROBE, f"{base}/bomb.png"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    probe = json.loads(done.stdout)
    print(f"gzip bomb ({BOMB_DECODED_MB} MB decoded): peak RSS grew {probe['growth_mb']:.1f} MB")
    assert probe["outcome"] == "invalid_input"
    assert probe["growth_mb"] < 30  # inflated, it would be BOMB_DECODED_MB or more


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
    from support.http_servers import free_port

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


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("93.184.216.34", False),
        ("2606:4700::1111", False),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("::ffff:10.0.0.1", True),  # IPv4-mapped
        ("::ffff:93.184.216.34", False),
        ("::10.0.0.1", True),  # IPv4-compatible
        ("::ffff:0:10.0.0.1", True),  # SIIT IPv4-translated
        ("2002:a00:1::1", True),  # 6to4 of 10.0.0.1
        ("2002:7f00:1::1", True),  # 6to4 of 127.0.0.1
        ("2002:5db8:d822::1", True),  # 6to4 of a public address: all of 2002::/16 is refused
        ("64:ff9b::10.0.0.1", True),  # NAT64
        ("64:ff9b::127.0.0.1", True),
        ("64:ff9b::93.184.216.34", False),  # what DNS64 answers for a public IPv4 host
        ("64:ff9b:1::a00:1", True),  # local-use NAT64
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", True),  # Teredo, client 10.0.0.1
        ("2606:4700::5efe:a00:1", True),  # ISATAP interface id carrying 10.0.0.1
        ("2606:4700::200:5efe:c0a8:101", True),  # ISATAP (universal bit) carrying 192.168.1.1
        ("fd00::1", True),
        ("fe80::1", True),
        ("::1", True),
    ],
)
def test_forbidden_addresses(address: str, forbidden: bool) -> None:
    import ipaddress

    assert forbidden_address(ipaddress.ip_address(address)) is forbidden


@pytest.mark.parametrize("address", ["2002:7f00:1::1", "64:ff9b::7f00:1", "::ffff:7f00:1"])
def test_ipv6_embedding_loopback_is_refused_before_connecting(
    server, tmp_path: Path, monkeypatch, address: str
) -> None:
    base, app = server
    port = base.rsplit(":", 1)[1]

    async def resolve(host: str, port: int) -> list[str]:
        return [address]

    monkeypatch.setattr(image_input, "_resolve", resolve)
    before = len(app.state.hits)
    exc = failure(f"http://images.test:{port}/f/img.png", tmp_path, allow_private=False)
    assert exc.code is ErrorCode.invalid_input and "non-public address" in exc.message and address in exc.message
    assert len(app.state.hits) == before
