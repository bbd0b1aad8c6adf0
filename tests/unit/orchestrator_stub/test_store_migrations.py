"""The store's schema is Alembic's: a new database gets every revision, a SQLite file made before (by the stub
that kept its own CREATE statements) is recognised, stamped and upgraded with its rows, and replicas starting
side by side on an empty PostgreSQL migrate it once."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import legacy_db
from support.databases import Databases

from orchestrator_stub.db import Store
from orchestrator_stub.db.migrate import head
from worker_app_fastwan.core.protocol import Capabilities
from worker_app_fastwan.core.schema import JobInput

OLD_JOB = json.dumps(JobInput(prompt="from before").model_dump(mode="json", exclude_none=True))


def _columns(engine: sa.Engine) -> dict[str, set[str]]:
    inspector = sa.inspect(engine)
    return {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}


@pytest.mark.parametrize(
    "schema",
    [
        legacy_db.EVENTS_SCHEMA,
        legacy_db.events_altered(),
        legacy_db.PRE_ALEMBIC_SCHEMA,
        legacy_db.altered(),
        legacy_db.before_output_targets(),
        legacy_db.before_attempt_secrets(),
    ],
    ids=["events", "events-altered", "targets", "altered", "before-targets", "before-secrets"],
)
def test_a_database_from_before_alembic_is_stamped_and_upgraded_with_its_rows(tmp_path: Path, schema: str) -> None:
    path = legacy_db.make(tmp_path / "old.sqlite3", schema)
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO jobs (job_id, status, input, mode, width, height, num_frames, stage, created_at, updated_at)"
            " VALUES ('old-job', 'queued', ?, 't2v', 1280, 704, 121, 'queued', 1, 1)",
            (OLD_JOB,),
        )
    store = Store(path, lease_seconds=30, max_attempts=3)
    try:
        assert store.revision == head()
        claimed = store.claim("w1", "gpu", Capabilities(), with_secret=True)
        assert claimed is not None and claimed.job_id == "old-job" and claimed.attempt_secret
        assert (
            store.apply_status("old-job", "w1", "running", None, None, secret=claimed.attempt_secret).value == "applied"
        )
        assert store.figures().claims == 1, "the new attempts table works on the old file"
        fresh = Store(tmp_path / "new.sqlite3", lease_seconds=30, max_attempts=3)
        assert _columns(store.db.engine) == _columns(fresh.db.engine), "upgraded in place = made new"
        fresh.close()
    finally:
        store.close()
    Store(path, lease_seconds=30, max_attempts=3).close()  # a second start finds it current and changes nothing


def test_a_file_with_an_event_log_keeps_its_events_and_pending_webhooks(tmp_path: Path) -> None:
    path = legacy_db.make(tmp_path / "d140ec1.sqlite3", legacy_db.EVENTS_SCHEMA)
    with sqlite3.connect(path) as db:  # a job cancelled under main d140ec1: two events, its webhook pending
        db.execute(
            "INSERT INTO jobs (job_id, status, input, mode, width, height, num_frames, stage, notify_url,"
            " notify_events, error, webhook_state, created_at, updated_at, completed_at) VALUES ('old-job', 'failed',"
            " ?, 't2v', 1280, 704, 121, 'queued', 'https://h.example/', '[\"job.cancelled\"]', ?, 'pending', 1, 2, 2)",
            (OLD_JOB, json.dumps({"code": "cancelled", "message": "stop", "retryable": False})),
        )
        db.execute("INSERT INTO job_events (job_id, type, at, data) VALUES ('old-job', 'queued', 1, '{}')")
        db.execute("INSERT INTO job_events (job_id, type, at, data) VALUES ('old-job', 'cancelled', 2, '{}')")
        db.execute(
            "INSERT INTO webhook_deliveries (job_id, event_id, type, state, attempts, next_at, created_at)"
            " VALUES ('old-job', 2, 'job.cancelled', 'pending', 1, 2, 2)"
        )
    store = Store(path, lease_seconds=30, max_attempts=3)
    try:
        with store.db.engine.connect() as conn:
            stamped = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        assert stamped == head() and store.backfill_events() == 0 and store.restart_webhooks() == 1
        assert [e.type for e in store.events_after(0, 10, "old-job")] == ["queued", "cancelled"]
        (due,) = store.due_webhooks(10, lease_s=60, max_attempts=5)
        assert (due.job_id, due.type, due.attempt) == ("old-job", "job.cancelled", 2)
        new_job, _ = store.create_job(JobInput(prompt="after"), notify_url=None, idempotency_key=None, fingerprint="f")
        assert [e.id for e in store.events_after(2, 10)] == [3], "the log goes on after the old ids"
    finally:
        store.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_a_new_database_gets_every_revision(store_factory: Callable[..., Store]) -> None:
    store = store_factory(lease_seconds=30, max_attempts=3)
    with store.db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == head()
    tables = set(_columns(store.db.engine))
    assert {"jobs", "workers", "attempts", "requeues", "output_targets", "webhook_attempts"} <= tables


@pytest.mark.backends("postgresql")
def test_replicas_starting_together_on_an_empty_database_migrate_it_once(databases: Databases) -> None:
    url = databases.fresh()
    opened: list[Any] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(Store(url, lease_seconds=30, max_attempts=3))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not errors and len(opened) == 4
        assert {store.revision for store in opened} == {head()}
    finally:
        for store in opened:
            store.close()
