"""The store's fleet rules in-process, on an injected clock and on both databases: retry elsewhere (and not when
no other worker is around), quarantine (which failures count, when it ends, what ends a streak), a claim undone
for a worker that hung up, webhook deliveries between replicas, and the figures /metrics reads."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from support.clock import ManualClock
from support.databases import Databases

from orchestrator_stub.db import Store, engine
from worker_app_fastwan.core.protocol import Capabilities, HeartbeatRequest
from worker_app_fastwan.core.schema import JobInput

pytestmark = pytest.mark.backends("sqlite", "postgresql")
OOM = {"code": "out_of_memory", "message": "oom", "retryable": True}
CRASH = {"code": "generation_failed", "message": "exited with code 86", "retryable": True}
BAD_INPUT = {"code": "invalid_input", "message": "no", "retryable": False}
CANCELLED = {"code": "cancelled", "message": "stopped", "retryable": False}
CAPS = Capabilities()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(10_000.0)


@pytest.fixture
def store(store_factory: Callable[..., Any], clock: ManualClock) -> Store:
    return store_factory(  # type: ignore[no-any-return]
        lease_seconds=30, max_attempts=5, clock=clock, retry_elsewhere_s=20, quarantine_after=2, quarantine_s=100
    )


def submit(store: Store, prompt: str = "a fox") -> str:
    return store.create_job(JobInput(prompt=prompt), notify_url=None, idempotency_key=None, fingerprint="f")[0]


def fail(store: Store, worker: str, error: dict[str, Any]) -> str:
    """Submit a job, and `worker` claims one (the oldest it may) and fails it with `error`."""
    submit(store)
    claimed = store.claim(worker, "gpu", CAPS)
    assert claimed is not None
    store.apply_status(claimed.job_id, worker, "failed", None, error, attempt=claimed.attempt)
    return claimed.job_id


def test_a_failed_attempt_is_passed_over_for_its_worker_until_the_grace_ends(store: Store, clock: ManualClock) -> None:
    store.heartbeat("w2", HeartbeatRequest(state="idle"))  # another worker is around
    job_id = fail(store, "w1", OOM)
    answer = store.claim_for("w1", "gpu", CAPS)
    assert answer.job is None and answer.retry_at == clock.now + 20
    clock.now += 19.9
    assert store.claim("w1", "gpu", CAPS) is None
    clock.now += 0.2
    again = store.claim("w1", "gpu", CAPS)
    assert again is not None and (again.job_id, again.attempt) == (job_id, 2)


def test_another_worker_takes_the_failed_job_at_once(store: Store) -> None:
    store.heartbeat("w2", HeartbeatRequest(state="idle"))
    job_id = fail(store, "w1", OOM)
    taken = store.claim("w2", "gpu", CAPS)
    assert taken is not None and (taken.job_id, taken.attempt) == (job_id, 2)


def test_with_no_other_worker_around_the_same_worker_retries_at_once(store: Store, clock: ManualClock) -> None:
    store.heartbeat("w-old", HeartbeatRequest(state="idle"))
    clock.now += 61  # heard from more than a minute ago: not around
    job_id = fail(store, "w1", OOM)
    again = store.claim("w1", "gpu", CAPS)
    assert again is not None and again.job_id == job_id


def test_a_lease_running_out_counts_against_the_worker_and_passes_it_over(store: Store, clock: ManualClock) -> None:
    store.heartbeat("w2", HeartbeatRequest(state="idle"))
    job_id = submit(store)
    assert store.claim("w1", "gpu", CAPS) is not None
    clock.now += 31
    store.heartbeat("w2", HeartbeatRequest(state="idle"))  # w2 still around (and this expires w1's lease)
    assert store.claim("w1", "gpu", CAPS) is None
    assert store.figures().lease_expiries == 1
    taken = store.claim("w2", "gpu", CAPS)
    assert taken is not None and taken.job_id == job_id


def test_failures_of_the_box_in_a_row_quarantine_it_until_it_comes_back(store: Store, clock: ManualClock) -> None:
    fail(store, "w1", BAD_INPUT)  # the job's fault
    fail(store, "w1", CANCELLED)  # nobody's
    fail(store, "w1", OOM)
    assert store.quarantined() == {}, "one failure of the box so far"
    clock.now += 21  # past the retry grace: w1 may take the requeued jobs back
    fail(store, "w1", CRASH)
    answer = store.claim_for("w1", "gpu", CAPS)
    assert answer.job is None and answer.streak == 2 and answer.quarantined_until == clock.now + 100
    assert store.quarantined() == {"w1": clock.now + 100}
    assert store.workers()[0][0]["quarantined_until"] == clock.now + 100
    assert store.figures().quarantined == {"w1": clock.now + 100}

    clock.now += 100.1
    submit(store)
    back = store.claim("w1", "gpu", CAPS)  # it comes back by itself
    assert back is not None
    store.apply_status(back.job_id, "w1", "failed", None, OOM, attempt=back.attempt)
    assert "w1" in store.quarantined(), "still failing: straight back in"

    clock.now += 100.1
    submit(store)
    good = store.claim("w1", "gpu", CAPS)
    assert good is not None
    store.apply_status(good.job_id, "w1", "completed", {"ok": True}, None, attempt=good.attempt)
    fail(store, "w1", OOM)
    assert store.quarantined() == {}, "a completed job ended the streak"


def test_a_released_claim_puts_the_job_back_as_it_was(store: Store) -> None:
    job_id = submit(store)
    claimed = store.claim("w1", "gpu", CAPS, with_secret=True)
    assert claimed is not None and store.release(job_id, "w1", claimed.attempt)
    assert not store.release(job_id, "w1", claimed.attempt), "once"
    again = store.claim("w2", "gpu", CAPS)
    assert again is not None and (again.job_id, again.attempt) == (job_id, 1)
    assert store.figures().claims == 1, "the released attempt is gone"


def test_each_webhook_delivery_goes_to_one_replica_until_its_lease_runs_out(
    store_factory: Callable[..., Any], databases: Databases, clock: ManualClock
) -> None:
    url = databases.fresh()
    replicas: list[Store] = [store_factory(database=url, lease_seconds=30, max_attempts=5, clock=clock) for _ in "ab"]
    for _ in range(40):
        job_id, _ = replicas[0].create_job(
            JobInput(prompt="p"), notify_url="https://hooks.example/x", idempotency_key=None, fingerprint="f"
        )
        replicas[0].cancel(job_id)  # final: its webhook is due
    # Both replicas' senders ask at once, again and again: each delivery goes to one of them.
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: replicas[i % 2].due_webhooks(3, 15, 5), range(32)))
    taken = [due.delivery_id for answer in answers for due in answer]
    assert len(taken) == len(set(taken)) == 40
    assert replicas[1].due_webhooks(100, 15, 5) == [], "leased"
    clock.now += 16  # their replica died mid-attempt: the leases ran out
    again = replicas[1].due_webhooks(100, 15, 5)
    assert sorted(due.delivery_id for due in again) == sorted(taken), "taken over: at least once"
    for due in again:
        assert replicas[1].webhook_attempt_done(due.delivery_id, due.attempt, 204, None) == "delivered"
    clock.now += 16
    assert replicas[0].due_webhooks(100, 15, 5) == [], "delivered: never again"


def test_the_figures_count_what_the_database_holds(store: Store, clock: ManualClock) -> None:
    first = submit(store)
    clock.now += 5
    submit(store)
    assert store.claim("w1", "gpu", CAPS) is not None
    figures = store.figures()
    assert figures.queued_by_mode == {"t2v": 1} and figures.statuses == {"claimed": 1, "queued": 1}
    assert figures.oldest_queued_age_s == 0 and figures.claims == 1 and figures.workers_seen == 1
    clock.now += 7
    assert store.figures().oldest_queued_age_s == 7
    store.apply_status(first, "w1", "completed", {"ok": True}, None)
    assert store.figures().statuses == {"completed": 1, "queued": 1}
    clock.now += 61
    assert store.figures().workers_seen == 0


@pytest.mark.backends("postgresql")
def test_leases_are_judged_by_the_database_clock_not_the_process_clock(
    store_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # This replica's clock is an hour fast; PostgreSQL's is right: leases must not notice.
    real = engine._wall
    monkeypatch.setattr(engine, "_wall", lambda: real() + 3600)
    store: Store = store_factory(lease_seconds=30, max_attempts=3)
    job_id = submit(store)
    assert store.claim("w1", "gpu", CAPS) is not None
    with store.db.engine.connect() as conn:
        db_now = conn.exec_driver_sql("SELECT CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)").scalar_one()
    lease_left = store.get_job(job_id)["lease_expires_at"] - db_now  # type: ignore[index]
    assert 25 < lease_left <= 31, lease_left
    store.expire_leases()
    assert store.get_job(job_id)["status"] == "claimed"  # type: ignore[index]
    assert abs(store.now() - db_now) < 60
