"""What the stub keeps and shows about a job, against a real stub process: its database is private to its
user, and the unauthenticated job view never shows the credentials an image URL may carry."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from support.stubs import StubProcess


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sqlite_only(stub: StubProcess) -> None:
    if stub.database not in (None, str(stub.db)):  # STUB_TEST_BACKENDS=postgresql: the server keeps its own files
        pytest.skip("a SQLite file's permissions")


def test_database_and_its_wal_are_created_0600(stub: StubProcess) -> None:
    _sqlite_only(stub)
    stub.submit()
    assert _mode(stub.db) == 0o600
    wal = stub.db.with_name(stub.db.name + "-wal")
    assert wal.exists() and _mode(wal) == 0o600


def test_an_existing_world_readable_database_is_tightened(stub_factory: Callable[..., StubProcess]) -> None:
    first = stub_factory()
    _sqlite_only(first)
    job_id = first.submit()
    first.kill()
    os.chmod(first.db, 0o644)
    first.start()
    assert _mode(first.db) == 0o600
    assert first.job(job_id)["status"] == "queued", "same data"


def test_image_url_credentials_are_redacted_in_the_public_view_only(stub: StubProcess) -> None:
    url = "https://user:s3cret@images.example.com/in/fox.png?X-Amz-Signature=abc123&X-Amz-Credential=AKIA#frag"
    job_id = stub.submit(image_url=url)
    shown = stub.job(job_id)["input"]["image_url"]
    assert shown == "https://images.example.com/in/fox.png?…"
    listed = stub.get("/v1/jobs").json()["jobs"][0]["input"]["image_url"]
    assert listed == shown
    assert stub.claim_job("w1")["input"]["image_url"] == url, "the worker still gets the URL it must fetch"
