"""A fleet's orchestrator, through a real stub process, on SQLite and on PostgreSQL: long-poll claims, a claim
whose worker hung up, retry elsewhere, quarantine, and /metrics. Workers are played over HTTP here (their ids
are all that matters); test_fleet_workers.py runs real ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.stubs import StubProcess, job_result, wait_for

pytestmark = pytest.mark.backends("sqlite", "postgresql")

LEASE_S = 4.0
GRACE_S = 1.5
QUARANTINE_S = 2.5
OOM = {"code": "out_of_memory", "message": "CUDA out of memory", "retryable": True}
BAD_INPUT = {"code": "invalid_input", "message": "the image is not an image", "retryable": False}


@pytest.fixture(scope="module")
def stub(module_stubs: Callable[..., StubProcess]) -> StubProcess:
    return module_stubs(
        LEASE_SECONDS=LEASE_S,
        RETRY_ELSEWHERE_S=GRACE_S,
        QUARANTINE_AFTER_FAILURES=2,
        QUARANTINE_S=QUARANTINE_S,
        CLAIM_WAIT_MAX_S=10,
        MAX_ATTEMPTS=3,
    )


def claim(stub: StubProcess, worker_id: str, wait_s: float = 0.0, timeout_s: float = 30) -> httpx.Response:
    body = {"worker_id": worker_id, "gpu_class": "test-gpu", "wants_attempt_secret": True, "wait_s": wait_s}
    return stub.post("/internal/buffer/jobs/claim", body, timeout=timeout_s)


def report(stub: StubProcess, job: dict[str, Any], worker_id: str, status: str, **fields: Any) -> httpx.Response:
    secret = {"attempt": job["attempt"], "attempt_secret": job["attempt_secret"]}
    return stub.status(job["job_id"], worker_id, status, **secret, **fields)


def claimed(stub: StubProcess, worker_id: str, **kwargs: Any) -> dict[str, Any]:
    response = claim(stub, worker_id, **kwargs)
    assert response.status_code == 200, (response.status_code, response.headers)
    return response.json()["job"]  # type: ignore[no-any-return]


def metrics(stub: StubProcess) -> dict[str, float]:
    """`name{label="v"}` (or `name`) -> value."""
    response = stub.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_a_waiting_claim_gets_a_job_the_moment_it_is_submitted(stub: StubProcess) -> None:
    answers: list[tuple[httpx.Response, float]] = []

    def waiting_claim() -> None:
        answers.append((claim(stub, "lp-1", wait_s=8), time.monotonic()))

    waiter = threading.Thread(target=waiting_claim)
    waiter.start()
    time.sleep(0.5)  # the claim found nothing and waits
    assert not answers, "nothing was queued: the claim waits"
    job_id = stub.submit("a heron at dawn")
    submitted = time.monotonic()
    waiter.join(10)
    response, answered = answers[0]
    assert response.status_code == 200 and response.json()["job"]["job_id"] == job_id
    assert answered - submitted < 1.0, "answered when the job came, not at the end of the wait"
    assert report(stub, response.json()["job"], "lp-1", "completed").status_code == 200


def test_a_claim_that_may_not_wait_is_answered_at_once(stub: StubProcess) -> None:
    started = time.monotonic()
    old = stub.claim("lp-old")  # a v1.2 worker: no wait_s
    assert old.status_code == 204 and old.headers["X-Claim-Wait-S"] == "0"
    held = claim(stub, "lp-2", wait_s=0.6)
    assert held.status_code == 204 and held.headers["X-Claim-Wait-S"] == "0.6"
    assert 0.6 <= time.monotonic() - started < 5


def test_a_claim_whose_worker_hung_up_puts_the_job_back(stub: StubProcess) -> None:
    with pytest.raises(httpx.ReadTimeout):
        claim(stub, "lp-gone", wait_s=6, timeout_s=0.5)  # the worker stops waiting (a drain, a timeout)
    job_id = stub.submit("a fox in the snow")
    wait_for(lambda: "claim released" in stub.log_text(), 10, what="the hung-up claim to give the job back")
    again = claimed(stub, "lp-3")
    assert (again["job_id"], again["attempt"]) == (job_id, 1), "the released attempt does not count"
    assert report(stub, again, "lp-3", "completed").status_code == 200


def test_a_failed_attempt_goes_to_another_worker_then_back_after_the_grace(stub: StubProcess) -> None:
    job_id = stub.submit("a lighthouse in fog")
    first = claimed(stub, "re-a")
    assert report(stub, first, "re-a", "failed", error=OOM).status_code == 200  # requeued
    refused = claim(stub, "re-a")
    assert refused.status_code == 204, "the worker it failed on is passed over"
    second = claimed(stub, "re-b")
    assert (second["job_id"], second["attempt"]) == (job_id, 2)
    assert report(stub, second, "re-b", "failed", error=OOM).status_code == 200  # requeued again

    started = time.monotonic()
    third = claimed(stub, "re-b", wait_s=8)  # nobody else claims: after the grace it is re-b's again
    assert (third["job_id"], third["attempt"]) == (job_id, 3)
    assert GRACE_S - 0.5 <= time.monotonic() - started < 6
    assert report(stub, third, "re-b", "completed").status_code == 200
    assert [r["worker_id"] for r in stub.job(job_id)["requeues"]] == ["re-a", "re-b"]


def test_a_worker_whose_attempts_keep_failing_is_quarantined_then_comes_back(stub: StubProcess) -> None:
    jobs = [stub.submit(f"quarantine {n}") for n in range(4)]
    first = claimed(stub, "q-1")
    assert report(stub, first, "q-1", "failed", error=BAD_INPUT).status_code == 200  # the job's fault: not counted
    second = claimed(stub, "q-1")
    assert report(stub, second, "q-1", "failed", error=OOM).status_code == 200
    third = claimed(stub, "q-1")  # one failure in a row: still gets jobs
    assert report(stub, third, "q-1", "failed", error=OOM).status_code == 200

    refused = claim(stub, "q-1")
    assert refused.status_code == 204 and "2 failed attempts in a row" in refused.headers["X-Worker-Quarantined"]
    assert "claim refused: worker quarantined" in stub.log_text()
    worker = next(w for w in stub.get("/v1/queue").json()["workers"] if w["worker_id"] == "q-1")
    assert worker["quarantined_until"] is not None
    assert metrics(stub)["stub_workers_quarantined"] >= 1

    started = time.monotonic()
    held = claim(stub, "q-1", wait_s=8)  # a waiting claim waits out the quarantine, not the whole 8 s
    assert held.status_code == 204 and held.headers["X-Worker-Quarantined"]
    assert time.monotonic() - started < 6
    back = claimed(stub, "q-1")  # it comes back by itself
    assert report(stub, back, "q-1", "completed").status_code == 200  # and a success ends its streak
    worker = next(w for w in stub.get("/v1/queue").json()["workers"] if w["worker_id"] == "q-1")
    assert worker["quarantined_until"] is None
    for job_id in jobs:  # what is left goes, so that the next test's claims find only their own jobs
        stub.post(f"/v1/jobs/{job_id}/cancel", key=None)


def test_metrics_are_the_queue_as_the_database_has_it(stub: StubProcess) -> None:
    before = metrics(stub)
    waiting = [stub.submit(f"metric {n}", num_frames=5) for n in range(3)]
    held = claimed(stub, "m-1")
    now = metrics(stub)
    assert now['stub_jobs_queued{mode="t2v"}'] == before['stub_jobs_queued{mode="t2v"}'] + 2
    assert now['stub_jobs_queued{mode="i2v"}'] == 0
    assert now["stub_jobs_running"] == before["stub_jobs_running"] + 1
    assert now["stub_claims_total"] == before["stub_claims_total"] + 1
    assert now["stub_oldest_queued_age_seconds"] > 0
    assert now["stub_workers_seen"] >= 1

    # The held job's lease runs out (nobody beats for it): one more expiry, and it is queued again.
    wait_for(
        lambda: metrics(stub)["stub_lease_expiries_total"] == before["stub_lease_expiries_total"] + 1,
        LEASE_S + 5,
        what="the lease to run out",
    )
    again = claimed(stub, "m-1")
    assert report(stub, again, "m-1", "completed", result=job_result(again["job_id"])).status_code == 200
    for job_id in waiting:
        stub.post(f"/v1/jobs/{job_id}/cancel", key=None)
    after = metrics(stub)
    assert after["stub_jobs_completed_total"] == before["stub_jobs_completed_total"] + 1
    assert after["stub_jobs_failed_total"] == before["stub_jobs_failed_total"] + 2  # the cancelled ones
    assert held["job_id"] in waiting and after['stub_jobs_queued{mode="t2v"}'] == 0


def test_metrics_answer_a_scraper_under_any_host_name(stub: StubProcess) -> None:
    # Prometheus scrapes a pod by its address: /metrics answers, like /health, whatever the Host (the page does not).
    scraped = httpx.get(f"{stub.url}/metrics", headers={"Host": "10.1.2.3:8080"}, timeout=5)
    assert scraped.status_code == 200 and "stub_jobs_queued" in scraped.text
    assert httpx.get(f"{stub.url}/v1/jobs", headers={"Host": "10.1.2.3:8080"}, timeout=5).status_code == 421
