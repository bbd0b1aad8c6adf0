"""Protocol v1.1 against a real stub process (docs/protocol.md): ids never `.`/`..`, a status names its
`attempt` (409 for a stale one), a heartbeat's `job_ids` renews every job the worker holds."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable

import pytest
from support.stubs import API_KEY, StubProcess, wait_for

from worker_app_fastwan.core.settings import SettingsError, load_settings

RETRYABLE = {"code": "out_of_memory", "message": "CUDA out of memory", "retryable": True}


def _claim_mine(stub: StubProcess, job_id: str, worker_id: str) -> dict:
    """Claim until this test's job comes up (jobs other tests left queued are older)."""
    while (job := stub.claim_job(worker_id))["job_id"] != job_id:
        pass
    return job


def _raw_post(stub: StubProcess, path: str, body: object) -> tuple[int, str]:
    """POST with the path sent byte for byte (httpx would resolve `..` segments before sending)."""
    conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=10)
    try:
        conn.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json", "X-Internal-Api-Key": API_KEY}
        )
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _beat(stub: StubProcess, worker_id: str, job_id: str | None, job_ids: list[str] | None = None) -> list[str]:
    body: dict[str, object] = {"state": "busy", "job_id": job_id}
    if job_ids is not None:
        body["job_ids"] = job_ids
    response = stub.post(f"/internal/buffer/workers/{worker_id}/heartbeat", body)
    assert response.status_code == 200, response.text
    return response.json()["cancel_job_ids"]


@pytest.mark.parametrize("bad", [".", ".."])
def test_dot_ids_are_refused_everywhere(shared_stub: StubProcess, bad: str) -> None:
    job_id = shared_stub.submit()
    assert shared_stub.claim(bad).status_code == 422, "worker_id in a claim"
    workers = {w["worker_id"] for w in shared_stub.get("/v1/queue").json()["workers"]}
    assert bad not in workers, "a refused claim records no worker"
    code, text = _raw_post(shared_stub, f"/internal/buffer/workers/{bad}/heartbeat", {"state": "idle"})
    assert code == 422, text
    code, text = _raw_post(shared_stub, f"/internal/buffer/jobs/{bad}/status", {"worker_id": "w1", "status": "running"})
    assert code == 422, text
    code, _ = _raw_post(shared_stub, f"/internal/videogen/jobs/{bad}/progress", {"worker_id": "w1", "stage": "queued"})
    assert code == 422
    beat = shared_stub.post("/internal/buffer/workers/w1/heartbeat", {"state": "busy", "job_ids": [job_id, bad]})
    assert beat.status_code == 422 and "job_ids" in beat.text
    status = shared_stub.post(f"/internal/buffer/jobs/{job_id}/status", {"worker_id": bad, "status": "running"})
    assert status.status_code == 422 and "worker_id" in status.text
    # Ids that merely contain dots stay valid.
    assert shared_stub.claim("...").status_code == 200, "there is a queued job: this test's"
    assert shared_stub.claim(".w.").status_code in (200, 204)


@pytest.mark.parametrize("bad", [".", ".."])
def test_worker_refuses_a_dot_worker_id_at_start(bad: str) -> None:
    with pytest.raises(SettingsError, match="BUFFER_WORKER_ID"):
        load_settings(env_file=None, BUFFER_WORKER_ID=bad)


def test_status_of_a_stale_attempt_is_409_even_from_the_current_holder(shared_stub: StubProcess) -> None:
    job_id = shared_stub.submit()
    assert _claim_mine(shared_stub, job_id, "w-stale")["attempt"] == 1
    assert shared_stub.status(job_id, "w-stale", "failed", error=RETRYABLE, attempt=1).status_code == 200  # requeued
    assert _claim_mine(shared_stub, job_id, "w-stale")["attempt"] == 2, "the same worker holds attempt 2 now"

    late = shared_stub.status(job_id, "w-stale", "completed", attempt=1)
    assert late.status_code == 409
    assert "attempt 2" in late.json()["detail"] and "attempt 1" in late.json()["detail"]
    assert shared_stub.job(job_id)["status"] == "claimed", "the stale report changed nothing"
    assert shared_stub.status(job_id, "w-stale", "running", attempt=3).status_code == 409, (
        "a future attempt is not current either"
    )

    assert shared_stub.status(job_id, "w-stale", "completed", attempt=2).status_code == 200
    assert shared_stub.status(job_id, "w-stale", "completed", attempt=2).status_code == 200, (
        "the same final status again"
    )
    assert shared_stub.status(job_id, "w-stale", "completed", attempt=1).status_code == 409
    view = shared_stub.job(job_id)
    assert (view["status"], view["attempts"]) == ("completed", 2)


def test_status_without_attempt_is_judged_as_in_v1(shared_stub: StubProcess) -> None:
    job_id = shared_stub.submit()
    _claim_mine(shared_stub, job_id, "w-v1")
    assert shared_stub.status(job_id, "w-other", "completed").status_code == 409, "not the holder"
    assert shared_stub.status(job_id, "w-v1", "completed").status_code == 200
    assert shared_stub.status(job_id, "w-v1", "completed").status_code == 200


def test_attempt_must_be_a_positive_bounded_integer(shared_stub: StubProcess) -> None:
    job_id = shared_stub.submit()
    _claim_mine(shared_stub, job_id, "w-bounds")
    for bad in (0, -1, 2**63, "1x", 1.5):
        response = shared_stub.post(
            f"/internal/buffer/jobs/{job_id}/status", {"worker_id": "w-bounds", "status": "running", "attempt": bad}
        )
        assert response.status_code == 422, (bad, response.text)


def test_heartbeat_job_ids_renew_every_job_the_worker_holds(stub_factory: Callable[..., StubProcess]) -> None:
    stub = stub_factory(LEASE_SECONDS=1)
    generating, uploading, forgotten = stub.submit("one"), stub.submit("two"), stub.submit("three")
    assert [stub.claim_job("w1")["job_id"] for _ in range(3)] == [generating, uploading, forgotten]

    deadline = time.monotonic() + 2.5  # more than two leases
    while time.monotonic() < deadline:
        assert _beat(stub, "w1", generating, [generating, uploading]) == []
        time.sleep(0.2)
    assert stub.job(generating)["status"] == "claimed"
    assert stub.job(uploading)["status"] == "claimed", "named only in job_ids, and still renewed"
    assert stub.job(forgotten)["status"] == "queued", "a job the heartbeat does not name runs out"
    assert stub.status(uploading, "w1", "completed", attempt=1).status_code == 200


def test_heartbeat_job_ids_name_lost_jobs_to_cancel(stub_factory: Callable[..., StubProcess]) -> None:
    stub = stub_factory(LEASE_SECONDS=0.5)
    kept, lost = stub.submit("kept"), stub.submit("lost")
    stub.claim_job("w1")
    stub.claim_job("w1")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        _beat(stub, "w1", kept)  # a v1 heartbeat: renews only job_id
        time.sleep(0.1)
    wait_for(lambda: stub.job(lost)["status"] == "queued", 3, what="the unnamed lease to run out")
    assert stub.claim_job("w2")["job_id"] == lost
    assert _beat(stub, "w1", kept, [kept, lost]) == [lost], "w1 still lists it: it must stop"
    assert _beat(stub, "w2", lost, [lost]) == []
    assert (
        stub.post("/internal/buffer/workers/w1/heartbeat", {"state": "busy", "job_ids": ["j"] * 65}).status_code == 422
    )
