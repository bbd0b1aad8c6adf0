"""The stub's leases in-process, on an injected clock: no sleeps, every boundary exact, on SQLite and on
PostgreSQL. (test_stub_leases.py drives the same rules through a real stub process over HTTP.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from support.clock import ManualClock

from orchestrator_stub.db import Store
from worker_app_fastwan.core.protocol import Capabilities, HeartbeatRequest
from worker_app_fastwan.core.schema import JobInput

pytestmark = pytest.mark.backends("sqlite", "postgresql")
StoreFactory = Callable[..., Any]


def store(factory: StoreFactory, clock: ManualClock, max_attempts: int = 2) -> Store:
    return factory(lease_seconds=30, max_attempts=max_attempts, clock=clock)  # type: ignore[no-any-return]


def submit(s: Store) -> str:
    job_id, created = s.create_job(JobInput(prompt="a fox"), notify_url=None, idempotency_key=None, fingerprint="f")
    assert created
    return job_id


def test_a_lease_holds_until_it_runs_out_then_the_job_is_requeued(store_factory: StoreFactory) -> None:
    clock = ManualClock()
    s = store(store_factory, clock)
    job_id = submit(s)
    assert (claimed := s.claim("w1", "gpu", Capabilities())) is not None and claimed.job_id == job_id

    clock.now += 29.9
    s.expire_leases()
    assert s.get_job(job_id)["status"] == "claimed", "not yet: 0.1 s of the lease is left"

    clock.now += 0.2
    s.expire_leases()
    view = s.get_job(job_id)
    assert (view["status"], view["worker_id"]) == ("queued", None)
    again = s.claim("w2", "gpu", Capabilities())
    assert again is not None and (again.job_id, again.attempt) == (job_id, 2)


def test_a_heartbeat_naming_the_job_renews_its_lease(store_factory: StoreFactory) -> None:
    clock = ManualClock()
    s = store(store_factory, clock)
    job_id = submit(s)
    s.claim("w1", "gpu", Capabilities())

    for _ in range(3):  # 75 s in all, well past one 30 s lease, renewed every 25 s
        clock.now += 25
        s.heartbeat("w1", HeartbeatRequest(state="busy", job_id=job_id, job_ids=[job_id]))
        s.expire_leases()
    assert s.get_job(job_id)["status"] == "claimed"


def test_the_last_attempt_running_out_times_the_job_out(store_factory: StoreFactory) -> None:
    clock = ManualClock()
    s = store(store_factory, clock, max_attempts=1)
    job_id = submit(s)
    s.claim("w1", "gpu", Capabilities())

    clock.now += 31
    s.expire_leases()

    view = s.get_job(job_id)
    assert view["status"] == "failed" and view["error"]["code"] == "timeout" and not view["error"]["retryable"]
