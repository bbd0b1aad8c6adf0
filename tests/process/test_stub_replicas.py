"""Several stub processes ("replicas") on one PostgreSQL database: a job is claimed once whichever replica is
asked, a claim waiting on one replica hears of a job submitted to another (LISTEN/NOTIFY), an event stream on one
replica follows a job worked through the other as it happens, and webhooks and Salad-style dispatch run in every
replica yet go out once each. (test_fleet_workers.py kills a replica under real workers.)"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support.sse import SseReader
from support.stubs import API_KEY, Answer, Recorded, ScriptedServer, StubProcess, job_result, wait_for

pytestmark = pytest.mark.backends("postgresql")
CLAIMERS = 200
JOBS = 250


@pytest.fixture(scope="module")
def replicas(module_stubs: Callable[..., StubProcess]) -> tuple[StubProcess, StubProcess]:
    first = module_stubs(CLAIM_WAIT_MAX_S=10)
    return first, module_stubs(database=first.database, CLAIM_WAIT_MAX_S=10)


def test_two_replicas_never_hand_out_a_job_twice_to_200_claimers(replicas: tuple[StubProcess, StubProcess]) -> None:
    a, b = replicas
    submitted = {(a if n % 2 else b).submit(f"replica job {n}", num_frames=5) for n in range(JOBS)}

    async def claimer(n: int, http: httpx.AsyncClient, got: list[str]) -> None:
        base = (a, b)[n % 2].url  # half ask one replica, half the other
        while True:
            body = {"worker_id": f"c-{n}", "gpu_class": "test-gpu"}
            response = await http.post(f"{base}/internal/buffer/jobs/claim", json=body)
            if response.status_code == 204:
                return
            assert response.status_code == 200, response.text
            got.append(response.json()["job"]["job_id"])

    async def all_claimers() -> list[str]:
        got: list[str] = []
        # A new connection per request: one kept alive can be closed by the stub just as it is reused (a race a
        # real worker's retry covers), and a claim answered on a connection that then fails would go unseen here.
        limits = httpx.Limits(max_connections=CLAIMERS, max_keepalive_connections=0)
        async with httpx.AsyncClient(headers={"X-Internal-Api-Key": API_KEY}, timeout=60, limits=limits) as http:
            await asyncio.gather(*(claimer(n, http, got) for n in range(CLAIMERS)))
        return got

    got = asyncio.run(all_claimers())
    twice = [job_id for job_id, n in Counter(got).items() if n > 1]
    assert not twice, f"claimed more than once: {twice[:5]}"
    assert set(got) == submitted, "every job was claimed"
    assert a.get("/v1/jobs", status="queued").json()["total"] == 0
    for job_id in got:  # the next tests start from an empty queue
        a.post(f"/v1/jobs/{job_id}/cancel", key=None)


def test_a_claim_waiting_on_one_replica_hears_of_a_job_submitted_to_the_other(
    replicas: tuple[StubProcess, StubProcess],
) -> None:
    a, b = replicas
    answers: list[tuple[httpx.Response, float]] = []

    def waiting_claim() -> None:
        body = {"worker_id": "lp-b", "gpu_class": "test-gpu", "wait_s": 8}
        answers.append((b.post("/internal/buffer/jobs/claim", body, timeout=20), time.monotonic()))

    waiter = threading.Thread(target=waiting_claim)
    waiter.start()
    time.sleep(0.5)
    job_id = a.submit("submitted to the other replica")
    submitted = time.monotonic()
    waiter.join(15)
    response, answered = answers[0]
    assert response.status_code == 200 and response.json()["job"]["job_id"] == job_id
    assert answered - submitted < 1.0, "NOTIFY woke the other replica's claim"
    b.post(f"/v1/jobs/{job_id}/cancel", key=None)


def test_a_stream_on_one_replica_follows_a_job_worked_through_the_other(
    replicas: tuple[StubProcess, StubProcess],
) -> None:
    a, b = replicas
    job_id = a.submit("followed across replicas", num_frames=5)
    with b.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(10, read=5)) as response:
        assert response.status_code == 200
        events = SseReader(response)
        assert next(events).event == "queued"
        claimed = a.post("/internal/buffer/jobs/claim", {"worker_id": "sse-w", "gpu_class": "test-gpu"})
        assert claimed.json()["job"]["job_id"] == job_id
        assert next(events).event == "claimed"
        lags = []
        for step in range(1, 7):
            body = {"worker_id": "sse-w", "stage": "denoising", "progress": step / 8, "step": step, "total_steps": 7}
            sent = time.monotonic()
            assert a.post(f"/internal/videogen/jobs/{job_id}/progress", body).status_code == 204
            event = next(events)
            lags.append(time.monotonic() - sent)
            assert (event.event, event.json()["step"]) == ("progress", step)
        error = {"code": "invalid_input", "message": "on purpose", "retryable": False}
        assert a.status(job_id, "sse-w", "failed", error=error).status_code == 200
        assert [e.event for e in events.rest()] == ["failed"], "the stream ends with the final event"
    # B's reader of the log polls each second; woken by A's NOTIFY it reads at once.
    assert statistics.median(lags) < 0.3, lags


def test_every_replica_sends_webhooks_yet_each_goes_out_once(
    replicas: tuple[StubProcess, StubProcess], scripted_server: Callable[..., ScriptedServer]
) -> None:
    a, b = replicas
    receiver = scripted_server([Answer(200)])
    jobs = [(a, b)[n % 2].submit(f"hook {n}", notify_url=f"{receiver.url}/hook") for n in range(20)]
    for n, job_id in enumerate(jobs):  # final at once: a cancelled queued job
        (b, a)[n % 2].post(f"/v1/jobs/{job_id}/cancel", key=None)
    wait_for(lambda: all(a.job(j)["webhook_state"] == "delivered" for j in jobs), 30, what="every webhook")
    time.sleep(1.0)  # a second delivery, if any replica were to send one, would come now
    per_job = Counter(r.headers["x-stub-job-id"] for r in receiver.requests)
    assert set(per_job) == set(jobs) and set(per_job.values()) == {1}, per_job
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == len(jobs)


def test_dispatchers_in_both_replicas_hand_each_job_out_once(
    module_stubs: Callable[..., StubProcess], scripted_server: Callable[..., ScriptedServer]
) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def done(request: Recorded) -> dict[str, Any]:
        with lock:
            seen.append(request.headers["salad-job-id"])
        return job_result(request.headers["salad-job-id"])

    worker = scripted_server([Answer(200, done, delay_s=0.05)])
    url = f"{worker.url}/generate"
    first = module_stubs("--dispatch-to", url)
    second = module_stubs("--dispatch-to", url, database=first.database)
    jobs = [(first, second)[n % 2].submit(f"dispatch {n}") for n in range(12)]
    wait_for(lambda: all(first.job(j)["status"] == "completed" for j in jobs), 60, what="every job dispatched")
    assert sorted(seen) == sorted(jobs), "each job POSTed once"
    assert {"salad-dispatcher"} == {first.job(j)["worker_id"] for j in jobs}
    assert (first.log_text() + second.log_text()).count("dispatch finished") == len(jobs)
