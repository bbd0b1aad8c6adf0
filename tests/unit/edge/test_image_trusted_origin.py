"""The orchestrator's own origin is trusted for image downloads (it serves uploads); nothing else private is."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response
from PIL import Image
from support.http_servers import serve

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.edge.image import download_image


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    app = FastAPI()
    body = png()

    @app.get("/uploads/img.png")
    def image() -> Response:
        return Response(body, media_type="image/png")

    @app.get("/bounce")
    def bounce(to: str) -> RedirectResponse:
        return RedirectResponse(to, status_code=307)

    with serve(app) as base:
        yield base


def fetch(url: str, dest: Path, trusted_origin: str | None) -> Path:
    return asyncio.run(
        download_image(url, dest, allow_private=False, max_bytes=1 << 20, timeout_s=5.0, trusted_origin=trusted_origin)
    )


def test_the_orchestrators_own_origin_may_be_private(origin: str, tmp_path: Path) -> None:
    path = fetch(f"{origin}/uploads/img.png", tmp_path, trusted_origin=origin)
    assert Image.open(path).size == (24, 16)
    # A base URL with a path and a trailing slash is still the same origin.
    assert fetch(f"{origin}/uploads/img.png", tmp_path, trusted_origin=f"{origin}/api/").exists()


@pytest.mark.parametrize("trusted", [None, "http://127.0.0.1:1", "https://{host}", "http://localhost:{port}"])
def test_any_other_private_origin_is_refused(origin: str, tmp_path: Path, trusted: str | None) -> None:
    port = origin.rsplit(":", 1)[1]
    trusted = trusted.format(host=origin.removeprefix("http://"), port=port) if trusted else None
    with pytest.raises(JobFailure) as info:
        fetch(f"{origin}/uploads/img.png", tmp_path, trusted_origin=trusted)
    assert info.value.code is ErrorCode.invalid_input and "non-public address" in info.value.message


def test_a_redirect_from_the_trusted_origin_to_another_private_one_is_refused(origin: str, tmp_path: Path) -> None:
    port = origin.rsplit(":", 1)[1]
    with pytest.raises(JobFailure) as info:
        fetch(f"{origin}/bounce?to=http://127.0.0.2:{port}/uploads/img.png", tmp_path, trusted_origin=origin)
    assert info.value.code is ErrorCode.invalid_input and "127.0.0.2" in info.value.message
