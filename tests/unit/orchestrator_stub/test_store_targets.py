"""The output-target table: an existing database (from before it) opens and gains it; targets are kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support import legacy_db
from support.databases import Databases

from orchestrator_stub.db import Store
from orchestrator_stub.settings import StubSettingsError, load_settings
from worker_app_fastwan.core.schema import JobInput


def test_a_database_from_before_output_targets_opens_and_gains_the_table(tmp_path: Path) -> None:
    before = legacy_db.before_output_targets()
    assert "output_targets" not in before
    path = legacy_db.make(tmp_path / "old.sqlite3", before)
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO jobs (job_id, status, input, mode, width, height, num_frames, created_at, updated_at)"
            " VALUES ('old-job', 'queued', '{\"prompt\": \"x\"}', 't2v', 256, 256, 9, 1, 1)"
        )
    store = Store(path, lease_seconds=30, max_attempts=3)
    try:
        assert store.get_job("old-job")["status"] == "queued"
        store.add_output_target("old-job", 1, "videos/old-job/a1-x.mp4", "videos/old-job/a1-x.jpg", 99.0)
        target = store.output_target("old-job", "videos/old-job/a1-x.mp4")
        assert target is not None and target["attempt"] == 1 and target["verified_at"] is None
        assert store.output_target("another-job", "videos/old-job/a1-x.mp4") is None  # keys are per job
        store.mark_target_verified("videos/old-job/a1-x.mp4")
        assert store.output_target("old-job", "videos/old-job/a1-x.mp4")["verified_at"] is not None
    finally:
        store.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_a_new_job_and_its_target_survive_reopening(databases: Databases) -> None:
    path = databases.fresh()
    store = Store(path, lease_seconds=30, max_attempts=3)
    job_id, _ = store.create_job(JobInput(prompt="p"), notify_url=None, idempotency_key=None, fingerprint="f")
    store.add_output_target(job_id, 1, f"videos/{job_id}/a1-y.mp4", None, 1.0)
    store.close()
    again = Store(path, lease_seconds=30, max_attempts=3)
    try:
        assert again.output_target(job_id, f"videos/{job_id}/a1-y.mp4") is not None
    finally:
        again.close()


def test_the_stub_refuses_presigned_and_names_storage_problems() -> None:
    with pytest.raises(StubSettingsError, match="STORAGE_BACKEND: presigned is a worker's setting"):
        load_settings(None, INTERNAL_API_KEY="k", STORAGE_BACKEND="presigned")
    with pytest.raises(StubSettingsError, match="S3_BUCKET: is required") as caught:
        load_settings(None, INTERNAL_API_KEY="k", STORAGE_BACKEND="s3", AWS_SECRET_ACCESS_KEY="shh-31")
    assert "shh-31" not in str(caught.value)
    assert load_settings(None, INTERNAL_API_KEY="k").storage == "local"
