"""The event log, webhook deliveries and the event hub in-process, on an injected clock, on SQLite and PostgreSQL
(test_stub_events.py drives the same through a real stub over HTTP)."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from support import legacy_db
from support.clock import ManualClock
from support.databases import Databases

from orchestrator_stub.db import Store
from orchestrator_stub.event_hub import EventHub
from orchestrator_stub.settings import StubSettingsError, load_settings
from orchestrator_stub.wakeup import Wakeup
from orchestrator_stub.webhooks import backoff_s, standard_headers
from worker_app_fastwan.core.protocol import Capabilities, ProgressUpdate
from worker_app_fastwan.core.schema import JobInput, Stage

ERROR = {"code": "internal", "message": "boom", "retryable": False}
ALL = ("job.started", "job.progress", "job.completed", "job.failed", "job.cancelled")


pytestmark = pytest.mark.backends("sqlite", "postgresql")


@pytest.fixture
def make_store(store_factory: Callable[..., Store]) -> Callable[..., Store]:
    def make(clock: ManualClock, **kwargs: Any) -> Store:
        return store_factory(lease_seconds=30, max_attempts=2, clock=clock, **kwargs)

    return make


def submit(store: Store, notify: tuple[str, ...] | None = None, url: str | None = None) -> str:
    job_id, _ = store.create_job(
        JobInput(prompt="a fox"),
        notify_url=url or ("http://hooks.example/h" if notify else None),
        notify_events=notify,
        idempotency_key=None,
        fingerprint="f",
    )
    return job_id


def report(store: Store, job_id: str, step: int, worker: str = "w1", message: str = "") -> bool:
    update = ProgressUpdate(
        worker_id=worker, stage=Stage.denoising, progress=step / 10, step=step, total_steps=10, message=message
    )
    return store.record_progress(job_id, update)


def kinds(store: Store, job_id: str) -> list[str]:
    return [e.type for e in store.events_after(0, 1000, job_id)]


def test_every_change_is_one_event_in_order(make_store: Callable[..., Store]) -> None:
    clock = ManualClock()
    woken: list[str] = []
    store = make_store(clock, on_event=lambda: woken.append("event"))
    job_id = submit(store)
    assert store.claim("w1", "gpu", Capabilities()) is not None
    assert store.apply_status(job_id, "w1", "running", None, None).value == "applied"
    assert store.apply_status(job_id, "w1", "running", None, None).value == "applied"  # renews: no news
    assert report(store, job_id, 1) and report(store, job_id, 1) and report(store, job_id, 2)
    assert not report(store, job_id, 3, worker="w2"), "another worker's report is no event"
    assert store.cancel(job_id).value == "requested"
    store.apply_status(job_id, "w1", "failed", None, {"code": "cancelled", "message": "stop", "retryable": False})
    assert kinds(store, job_id) == [
        "queued",
        "claimed",
        "running",
        "progress",
        "progress",
        "cancel_requested",
        "cancelled",
    ]
    events = store.events_after(0, 1000, job_id)
    assert [e.id for e in events] == sorted(e.id for e in events)
    first, last = json.loads(events[0].data), json.loads(events[-1].data)
    assert first["input"]["prompt"] == "a fox" and first["status"] == "queued"
    assert last["error"]["code"] == "cancelled" and last["cancel_requested"] is True
    assert len(woken) == 7, "one wake-up per transaction that wrote an event"
    assert store.job_stream_start(job_id) == (True, events[-1].id, store.latest_event_id())


def test_a_requeue_and_a_timeout_are_events_too(make_store: Callable[..., Store]) -> None:
    clock = ManualClock()
    store = make_store(clock)
    job_id = submit(store)
    store.claim("w1", "gpu", Capabilities())
    clock.now += 31
    store.expire_leases()  # attempt 1 of 2: back to the queue
    store.claim("w2", "gpu", Capabilities())
    clock.now += 31
    store.expire_leases()  # attempt 2 of 2: timed out
    assert kinds(store, job_id) == ["queued", "claimed", "queued", "claimed", "failed"]
    requeued = json.loads(store.events_after(0, 1000, job_id)[2].data)
    assert requeued["requeued"] is True and requeued["last_error"]["code"] == "timeout"


def test_webhooks_are_queued_only_for_the_events_a_job_asked_for(make_store: Callable[..., Store]) -> None:
    clock = ManualClock()
    store = make_store(clock, webhook_progress_s=5)
    quiet, chatty = submit(store), submit(store, ALL)
    default = submit(store, url="http://hooks.example/d")
    for job_id in (quiet, chatty, default):
        assert store.claim("w1", "gpu", Capabilities()) is not None
        for step in range(1, 8):  # a report a second: 7 s, so the 5 s throttle lets 2 through
            report(store, job_id, step)
            clock.now += 1
        store.apply_status(job_id, "w1", "failed", None, ERROR)
    due = store.due_webhooks(100, lease_s=60, max_attempts=5)
    assert {d.job_id for d in due} == {chatty, default}, "one due per job: its oldest"
    rows = store._rows("SELECT type FROM webhook_deliveries WHERE job_id = :j ORDER BY id", j=chatty)
    chatty_types = [row["type"] for row in rows]
    assert chatty_types == ["job.started", "job.progress", "job.progress", "job.failed"]
    assert [d.type for d in due if d.job_id == default] == ["job.failed"]
    assert store.get_job(quiet)["webhook_state"] is None and store.get_job(default)["webhook_state"] == "pending"


def test_a_jobs_webhooks_go_out_in_order_leased_and_once_each(make_store: Callable[..., Store]) -> None:
    clock = ManualClock()
    store = make_store(clock, webhook_progress_s=0)
    job_id = submit(store, ("job.started", "job.progress", "job.failed"))
    store.claim("w1", "gpu", Capabilities())
    report(store, job_id, 1)
    report(store, job_id, 2)
    store.apply_status(job_id, "w1", "failed", None, ERROR)

    (started,) = store.due_webhooks(10, lease_s=60, max_attempts=3)
    assert (started.type, started.attempt) == ("job.started", 1)
    assert started.webhook_id == f"msg_{job_id}_{started.event_id}"
    assert store.due_webhooks(10, lease_s=60, max_attempts=3) == [], "leased: and the later ones wait for it"
    clock.now += 61  # its sender died: the lease ran out
    (again,) = store.due_webhooks(10, lease_s=60, max_attempts=3)
    assert (again.delivery_id, again.attempt) == (started.delivery_id, 1)
    assert store.freeze_webhook_body(again.delivery_id, "first") == "first"
    assert store.freeze_webhook_body(again.delivery_id, "second") == "first", "every attempt sends the same bytes"
    assert store.webhook_attempt_done(again.delivery_id, 1, 500, "HTTP 500", retry_at=clock.now + 2) == "pending"
    assert store.due_webhooks(10, lease_s=60, max_attempts=3) == [], "backing off"
    clock.now += 2
    (retry,) = store.due_webhooks(10, lease_s=60, max_attempts=3)
    assert (retry.delivery_id, retry.attempt, retry.body) == (started.delivery_id, 2, "first")
    assert store.webhook_attempt_done(retry.delivery_id, 2, 200, None, retry_at=None) == "delivered"

    (first_progress,) = store.due_webhooks(10, lease_s=60, max_attempts=3)
    assert first_progress.type == "job.progress"
    # A failed progress webhook with news waiting behind it is not retried: progress is a sample.
    outcome = store.webhook_attempt_done(first_progress.delivery_id, 1, None, "ConnectError", retry_at=clock.now)
    assert outcome == "superseded"
    (second_progress,) = store.due_webhooks(10, lease_s=60, max_attempts=3)
    assert store.webhook_attempt_done(second_progress.delivery_id, 1, 204, None, retry_at=None) == "delivered"
    (final,) = store.due_webhooks(10, lease_s=60, max_attempts=3)
    assert final.type == "job.failed"
    assert store.webhook_attempt_done(final.delivery_id, 1, 500, "HTTP 500", retry_at=None) == "gave_up"
    assert store.get_job(job_id)["webhook_state"] == "gave_up"
    attempts = store.webhook_attempts(job_id)
    assert [(a["type"], a["attempt"], a["ok"]) for a in attempts] == [
        ("job.started", 1, False),
        ("job.started", 2, True),
        ("job.progress", 1, False),
        ("job.progress", 1, True),
        ("job.failed", 1, False),
    ]


@pytest.mark.backends("postgresql")
def test_event_ids_become_visible_in_order_while_replicas_write_at_once(
    store_factory: Callable[..., Store], databases: Databases
) -> None:
    url = databases.fresh()
    replicas = [store_factory(database=url, lease_seconds=30, max_attempts=2) for _ in range(2)]
    jobs = [submit(replicas[0]) for _ in range(8)]
    for n in range(8):
        assert replicas[0].claim(f"w{n}", "gpu", Capabilities()) is not None
    stop, seen = threading.Event(), []

    def follow() -> None:  # what a stream does: read past the last id it saw, again and again
        cursor = 0
        while True:
            last_round = stop.is_set()
            rows = replicas[1].events_after(cursor, 1000)
            seen.extend(row.id for row in rows)
            cursor = rows[-1].id if rows else cursor
            if last_round and not rows:
                return

    reader = threading.Thread(target=follow)
    reader.start()
    with ThreadPoolExecutor(8) as pool:  # eight workers report at once, through both replicas
        list(pool.map(lambda n: [report(replicas[n % 2], jobs[n], s, worker=f"w{n}") for s in range(1, 11)], range(8)))
    stop.set()
    reader.join(30)
    written = [e.id for e in replicas[0].events_after(0, 10_000)]
    assert len(written) == 8 * 12 and seen == written, "a follower skipped an event committed after a later one"


def test_a_restart_makes_pending_webhooks_due_and_migrates_old_pending_ones(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    legacy_db.make(path)  # a stub from before the event log: a final job whose webhook is pending
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO jobs (job_id, status, input, mode, width, height, num_frames, stage, notify_url, error,"
            " webhook_state, created_at, updated_at, completed_at)"
            " VALUES ('old-job', 'failed', ?, 't2v', 1280, 704, 121, 'queued', 'http://h.example/', ?, 'pending',"
            " 1, 2, 2)",
            (json.dumps(JobInput(prompt="from before").model_dump(mode="json")), json.dumps(ERROR)),
        )
        db.execute("INSERT INTO webhook_attempts (job_id, attempt, at, ok) VALUES ('old-job', 1, 2, 0)")
    clock = ManualClock()
    store = Store(path, lease_seconds=30, max_attempts=2, clock=clock)
    assert store.backfill_events() == 1 and store.backfill_events() == 0
    assert kinds(store, "old-job") == ["failed"]
    assert store.restart_webhooks() == 1
    (due,) = store.due_webhooks(10, lease_s=60, max_attempts=5)
    assert (due.type, due.attempt) == ("job.failed", 2), "it keeps the attempts it had"
    store.close()
    store = Store(path, lease_seconds=30, max_attempts=2, clock=clock)  # restarted while that attempt was in flight
    assert store.due_webhooks(10, lease_s=60, max_attempts=5) == []
    assert store.restart_webhooks() == 1
    assert [d.delivery_id for d in store.due_webhooks(10, lease_s=60, max_attempts=5)] == [due.delivery_id]


def test_old_events_are_pruned_but_each_final_one_kept(make_store: Callable[..., Store]) -> None:
    clock = ManualClock()
    store = make_store(clock)
    old, running = submit(store), submit(store)
    store.claim("w1", "gpu", Capabilities())
    report(store, old, 1)
    store.apply_status(old, "w1", "failed", None, ERROR)
    store.claim("w1", "gpu", Capabilities())
    report(store, running, 1)
    clock.now += 100
    assert store.prune_events(older_than=clock.now - 50) == 3
    assert kinds(store, old) == ["failed"], "a stream of an old job still ends with its final event"
    assert kinds(store, running) == ["queued", "claimed", "progress"], "a job still running keeps its log"


async def until(check: Any) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_the_hub_reads_once_and_streams_catch_up_from_the_store(make_store: Callable[..., Store]) -> None:
    async def scenario() -> None:
        clock = ManualClock()
        wakeup = Wakeup()
        wakeup.bind(asyncio.get_running_loop())
        store = make_store(clock, on_event=wakeup.set)
        early = submit(store)  # before the hub starts: only the store has it
        hub = EventHub(store, wakeup, poll_s=30, ring_events=4)
        task = asyncio.create_task(hub.run())
        try:
            await until(lambda: hub.cursor == 1)
            followed = hub.follow(0, early, idle_s=30)
            assert (await anext(followed)).type == "queued"  # from the store: the ring starts after it
            later = submit(store)
            store.claim("w1", "gpu", Capabilities())  # takes `early`
            for step in range(1, 6):  # more than the ring holds
                report(store, early, step)
            got = [(await asyncio.wait_for(anext(followed), 5)) for _ in range(6)]
            assert [e.type if e else None for e in got] == ["claimed"] + ["progress"] * 5
            await until(lambda: hub.cursor == store.latest_event_id())
            assert [e.id for e in hub._ring] == [5, 6, 7, 8], "one read for all, and the ring stays bounded"
            # A stream resuming from before the ring reads pages from the store, and nothing twice.
            everything = hub.follow(0, None, idle_s=30)
            ids = [(await asyncio.wait_for(anext(everything), 5)).id for _ in range(8)]  # type: ignore[union-attr]
            assert ids == sorted(set(ids)) and len(ids) == 8
            assert hub.cached_after(0) is None and hub.cached_after(hub.cursor) == []
            assert kinds(store, later) == ["queued"]
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_a_secret_in_the_standard_form_is_its_base64_bytes_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    key = bytes(range(32))
    settings = load_settings(None, INTERNAL_API_KEY="k", WEBHOOK_SECRET="whsec_" + base64.b64encode(key).decode())
    assert settings.webhook_key() == key
    assert load_settings(None, INTERNAL_API_KEY="k", WEBHOOK_SECRET="c0ffee" * 8).webhook_key() == b"c0ffee" * 8
    for bad, why in (("whsec_not*base64", "not base64"), ("whsec_" + base64.b64encode(b"short").decode(), "24-64")):
        with pytest.raises(StubSettingsError) as refused:
            load_settings(None, INTERNAL_API_KEY="k", WEBHOOK_SECRET=bad)
        message = str(refused.value)
        assert message.startswith("invalid setting WEBHOOK_SECRET: ") and why in message and "\n" not in message
        assert bad not in message, "a secret is never shown"


def test_standard_headers_verify_with_the_specifications_library() -> None:
    key = bytes(range(40))
    body = b'{"type":"job.completed","job_id":"j1"}'
    headers = standard_headers(key, "msg_j1_7", int(time.time()), body)
    assert Webhook("whsec_" + base64.b64encode(key).decode()).verify(body, headers)["job_id"] == "j1"
    # A secret from before the standard form: its UTF-8 bytes are the key, which the library takes as bytes.
    legacy = "c0ffee" * 8
    headers = standard_headers(legacy.encode(), "msg_j1_8", int(time.time()), body)
    assert Webhook(legacy.encode()).verify(body, headers)["type"] == "job.completed"


def test_webhook_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_s(n, 0.5, 3) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_s(10_000, 1, 60) == 60
