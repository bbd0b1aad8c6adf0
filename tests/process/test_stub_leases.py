"""Leases against a real stub process: renewal by heartbeat, requeue on expiry, timeout after 3 attempts."""

from __future__ import annotations

import time
from collections.abc import Callable

from support.stubs import StubProcess, wait_for


def _wait_status(stub: StubProcess, job_id: str, status: str, timeout_s: float = 5.0) -> dict:
    return wait_for(
        lambda: (view := stub.job(job_id))["status"] == status and view, timeout_s, what=f"{job_id} {status}"
    )


def test_heartbeats_keep_the_lease(stub_factory: Callable[..., StubProcess]) -> None:
    stub = stub_factory(LEASE_SECONDS=1)
    job_id = stub.submit()
    stub.claim_job("w1")
    deadline = time.monotonic() + 2.0  # two leases
    while time.monotonic() < deadline:
        assert stub.heartbeat("w1", job_id).json() == {"cancel_job_ids": []}
        time.sleep(0.25)
    view = stub.job(job_id)
    assert (view["status"], view["worker_id"], view["attempts"]) == ("claimed", "w1", 1)
    assert stub.status(job_id, "w1", "completed").status_code == 200


def test_expired_lease_requeues_with_next_attempt_and_old_worker_gets_409(
    stub_factory: Callable[..., StubProcess],
) -> None:
    stub = stub_factory(LEASE_SECONDS=1)
    job_id = stub.submit()
    assert stub.claim_job("w1")["attempt"] == 1
    view = _wait_status(stub, job_id, "queued", timeout_s=3)
    assert view["worker_id"] is None
    assert view["attempts"] == 1
    assert (view["last_error"]["code"], view["last_error"]["retryable"], view["error"]) == ("timeout", True, None)
    assert [(r["attempt"], r["worker_id"]) for r in view["requeues"]] == [(1, "w1")]

    again = stub.claim_job("w2")
    assert (again["job_id"], again["attempt"]) == (job_id, 2)
    assert stub.status(job_id, "w1", "completed").status_code == 409, "w1 lost the lease"
    assert stub.heartbeat("w1", job_id).json()["cancel_job_ids"] == [job_id], "w1 is told to stop the lost job"
    assert stub.heartbeat("w2", job_id).json()["cancel_job_ids"] == []
    assert stub.status(job_id, "w2", "completed").status_code == 200
    assert stub.job(job_id)["attempts"] == 2


def test_three_expired_leases_fail_the_job_with_timeout(stub_factory: Callable[..., StubProcess]) -> None:
    stub = stub_factory(LEASE_SECONDS=0.5)
    job_id = stub.submit()
    for attempt in (1, 2, 3):
        job = stub.claim_job(f"w{attempt}")
        assert (job["job_id"], job["attempt"]) == (job_id, attempt)
        final = wait_for(lambda: stub.job(job_id)["status"] in ("queued", "failed"), 3, what="expiry")
        assert final
    view = stub.job(job_id)
    assert view["status"] == "failed"
    assert view["error"]["code"] == "timeout"
    assert view["error"]["retryable"] is False
    assert view["attempts"] == 3
    assert stub.claim("w4").status_code == 204
    assert stub.status(job_id, "w3", "completed").status_code == 409


def test_claim_expires_leases_itself_without_the_sweeper(stub_factory: Callable[..., StubProcess]) -> None:
    stub = stub_factory(LEASE_SECONDS=0.3, LEASE_CHECK_S=60)
    job_id = stub.submit()
    stub.claim_job("w1")
    time.sleep(0.4)
    job = stub.claim_job("w2")
    assert (job["job_id"], job["attempt"]) == (job_id, 2)


def test_cancelled_job_whose_worker_went_silent_fails_as_cancelled(stub_factory: Callable[..., StubProcess]) -> None:
    stub = stub_factory(LEASE_SECONDS=1)
    job_id = stub.submit()
    stub.claim_job("w1")
    assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 202
    view = _wait_status(stub, job_id, "failed", timeout_s=3)
    assert view["error"]["code"] == "cancelled", "a cancelled job is not requeued"
    assert stub.claim("w2").status_code == 204
