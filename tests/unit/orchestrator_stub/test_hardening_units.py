"""The in-process parts of issue 23's hardening: the guess throttle, where image files end, allowed origins, the
store's refusal of text it cannot encode and its migration of an older database, and two settings' effects."""

from __future__ import annotations

import io
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import legacy_db
from support.clock import ManualClock

from orchestrator_stub.app import create_app
from orchestrator_stub.db import Store, UnencodableText
from orchestrator_stub.image_check import trailing_bytes
from orchestrator_stub.results import StorageOrigins
from orchestrator_stub.settings import load_settings
from orchestrator_stub.throttle import GuessThrottle
from worker_app_fastwan.core.protocol import Capabilities
from worker_app_fastwan.core.schema import JobInput


def test_distinct_wrong_secrets_lock_a_client_out_for_a_doubling_time() -> None:
    clock = ManualClock()
    throttle = GuessThrottle(free=2, max_delay_s=8, clock=clock)
    for n in range(2):
        assert throttle.retry_after("1.2.3.4", f"guess-{n}".encode()) is None
        throttle.failed("1.2.3.4", f"guess-{n}".encode())
    assert throttle.retry_after("1.2.3.4", b"right") is None, "two free guesses"
    throttle.failed("1.2.3.4", b"guess-2")
    assert throttle.retry_after("1.2.3.4", b"right") == 1.0, "the right one waits too: a guesser learns nothing"
    assert throttle.retry_after("1.2.3.4", b"guess-0") is None, "a known wrong one is answered (401) at once"
    assert throttle.retry_after("5.6.7.8", b"right") is None, "per client"
    waits = []
    for n in range(3, 8):
        clock.now += 100
        throttle.failed("1.2.3.4", f"guess-{n}".encode())
        waits.append(throttle.retry_after("1.2.3.4", b"right"))
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0], "doubling, capped at max_delay_s"
    clock.now += 4000
    assert throttle.retry_after("1.2.3.4", b"right") is None, "forgotten after a quiet hour"


def test_the_same_wrong_secret_again_is_no_guess() -> None:
    """A worker with a stale key retries it forever: that must not lock out the workers beside it."""
    throttle = GuessThrottle(free=1, clock=ManualClock())
    for _ in range(100):
        throttle.failed("127.0.0.1", b"stale-key")
    assert throttle.retry_after("127.0.0.1", b"right-key") is None


def test_a_throttle_remembers_a_bounded_number_of_clients() -> None:
    throttle = GuessThrottle(free=0, max_clients=10, clock=ManualClock())
    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}", b"x")
    assert len(throttle._clients) == 10


def _image(fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 48), os.urandom(64 * 48 * 3)).save(buf, fmt, **options)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("JPEG", {"restart_marker_blocks": 1}), ("WEBP", {})],
)
def test_an_image_ends_where_its_structure_says(fmt: str, options: dict[str, object]) -> None:
    data = _image(fmt, **options)
    assert trailing_bytes(fmt, data) == 0
    assert trailing_bytes(fmt, data + b"PK\x03\x04 a zip after it") == 19
    with pytest.raises(ValueError):
        trailing_bytes(fmt, data[: len(data) // 2])


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://f003.backblazeb2.com/file/b/k", True),
        ("https://a.b.backblazeb2.com/k", True),
        ("https://backblazeb2.com/k", False),
        ("https://evilbackblazeb2.com/k", False),
        ("https://f003.backblazeb2.com.evil.example/k", False),
        ("http://f003.backblazeb2.com/k", False),
        ("https://f003.backblazeb2.com:8443/k", False),
        ("https://user@f003.backblazeb2.com/k", False),
        ("http://stub:8080/x", True),
        ("http://stub:8081/x", False),
    ],
)
def test_storage_origins_match_scheme_host_and_port(url: str, allowed: bool) -> None:
    assert StorageOrigins(("http://stub:8080", "https://*.backblazeb2.com")).allows(url) is allowed


@pytest.mark.backends("sqlite", "postgresql")
def test_the_store_refuses_text_it_cannot_encode(store_factory: Callable[..., Store]) -> None:
    store = store_factory(lease_seconds=30, max_attempts=3)
    bad = JobInput.model_construct(**(JobInput(prompt="x").model_dump() | {"prompt": "a fox \ud800"}))
    with pytest.raises(UnencodableText):
        store.create_job(bad, notify_url=None, idempotency_key=None, fingerprint="f")
    with pytest.raises(UnencodableText):
        store.create_job(JobInput(prompt="x"), notify_url="https://x/\udfff", idempotency_key=None, fingerprint="f")
    # PostgreSQL's text takes no NUL (SQLite's would): refused on both, so a request cannot fail on one only.
    with pytest.raises(UnencodableText):
        store.create_job(JobInput(prompt="x"), notify_url="https://x/\x00", idempotency_key=None, fingerprint="f")
    with pytest.raises(UnencodableText):
        store.claim("w1", "gpu\x00class", Capabilities())
    assert store.counts()["queued"] == 0


def test_a_database_from_before_attempt_secrets_is_migrated_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = legacy_db.make(tmp_path / "old.sqlite3", legacy_db.before_attempt_secrets())
    with sqlite3.connect(path) as db:  # the schema as it was, without the v1.2 column
        db.execute(
            "INSERT INTO jobs (job_id, status, input, mode, width, height, num_frames, stage, created_at, updated_at)"
            " VALUES ('old-job', 'queued', ?, 't2v', 1280, 704, 121, 'queued', 1, 1)",
            (json.dumps(JobInput(prompt="from before").model_dump(mode="json", exclude_none=True)),),
        )
    store = Store(path, lease_seconds=30, max_attempts=3)
    claimed = store.claim("w1", "gpu", Capabilities(), with_secret=True)
    assert claimed is not None and claimed.job_id == "old-job" and claimed.attempt_secret
    assert store.apply_status("old-job", "w1", "running", None, None, secret="wrong").value == "forbidden"
    assert store.apply_status("old-job", "w1", "running", None, None, secret=claimed.attempt_secret).value == "applied"
    store.close()
    Store(path, lease_seconds=30, max_attempts=3).close()  # a second start finds the column there


def _client(tmp_path: Path, **settings: str) -> TestClient:
    stub = load_settings(None, INTERNAL_API_KEY="k", STUB_DB=tmp_path / "s.sqlite3", **settings)
    return TestClient(create_app(stub), base_url="http://127.0.0.1")


def test_attempt_secret_required_refuses_v11_claims(tmp_path: Path) -> None:
    client = _client(tmp_path, ATTEMPT_SECRET_REQUIRED="true")
    headers = {"X-Internal-Api-Key": "k"}
    v11 = client.post("/internal/buffer/jobs/claim", json={"worker_id": "old"}, headers=headers)
    assert v11.status_code == 403 and "wants_attempt_secret" in v11.text
    v12 = {"worker_id": "new", "wants_attempt_secret": True}
    assert client.post("/internal/buffer/jobs/claim", json=v12, headers=headers).status_code == 204


def test_api_docs_are_off_unless_asked_for(tmp_path: Path) -> None:
    assert _client(tmp_path).get("/docs").status_code == 404
    assert _client(tmp_path).get("/openapi.json").status_code == 200
    docs = _client(tmp_path, STUB_API_DOCS="true").get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
