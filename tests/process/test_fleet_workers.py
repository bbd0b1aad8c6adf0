"""A fleet in miniature: two stub replicas on one PostgreSQL behind a load balancer, and two real buffer-mode
workers (the tiny backend) that reach them only through it. Jobs that fail on purpose (`[tiny:oom]`,
`[tiny:crash]`) are retried on the other worker, and workers that keep failing are quarantined and come back by
themselves; then a replica is killed (SIGKILL) mid-run and the workers finish every job through the other.

The tests run in order on the same workers: each one's failures count towards the next one's quarantine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.balancer import Balancer
from support.procs import WorkerProcess, WorkerSet, wait_final, wait_job
from support.stubs import StubProcess, wait_for

pytestmark = pytest.mark.backends("postgresql")

SMALL = {"width": 256, "height": 256, "num_frames": 5, "num_inference_steps": 1}
QUARANTINE_S = 12.0
STUB_ENV = {
    "LEASE_SECONDS": 6,
    "MAX_ATTEMPTS": 2,
    "RETRY_ELSEWHERE_S": 30,  # longer than any test here waits: a retry on the same worker would show
    "QUARANTINE_AFTER_FAILURES": 3,
    "QUARANTINE_S": QUARANTINE_S,
    "CLAIM_WAIT_MAX_S": 5,
}
WORKERS = ("fw-a", "fw-b")


@pytest.fixture(scope="module")
def fleet(
    module_stubs: Callable[..., StubProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    first = module_stubs(**STUB_ENV)
    second = module_stubs(database=first.database, **STUB_ENV)
    balancer = Balancer([first.port, second.port])
    started = WorkerSet()
    folder = tmp_path_factory.mktemp("workers")
    for name in WORKERS:
        started.add(WorkerProcess.buffer(folder / name, balancer.url, name, BUFFER_WORKER_ID=name, CLAIM_WAIT_S=5))
    try:
        for worker in started.started:
            worker.wait_for_event("claiming jobs")
        yield {"replicas": (first, second), "balancer": balancer, "workers": started.started}
    finally:
        started.close()
        balancer.close()


def _attempt_workers(view: dict[str, Any]) -> list[str]:
    """The worker of each attempt, in order: those that went back to the queue, then the last one."""
    return [r["worker_id"] for r in view["requeues"]] + [view["worker_id"]]


def test_a_job_that_fails_on_one_worker_is_retried_on_the_other(fleet: dict[str, Any]) -> None:
    stub = fleet["replicas"][0]
    job_id = stub.submit("a moth [tiny:oom]", **SMALL)
    view = wait_final(stub, job_id, 90)
    assert view["status"] == "failed" and view["error"]["code"] == "out_of_memory"
    assert sorted(_attempt_workers(view)) == sorted(WORKERS), "attempt 2 went to the other worker"


def test_workers_that_keep_failing_are_quarantined_and_come_back(fleet: dict[str, Any]) -> None:
    stub, other = fleet["replicas"]
    for prompt in ("a storm [tiny:crash]", "a whale [tiny:oom]"):  # with the moth: 3 failures each, in a row
        view = wait_final(stub, stub.submit(prompt, **SMALL), 120)
        assert view["status"] == "failed" and sorted(_attempt_workers(view)) == sorted(WORKERS)
    quarantined = time.monotonic()
    seen = {w["worker_id"] for w in other.get("/v1/queue").json()["workers"] if w["quarantined_until"]}
    assert seen >= set(WORKERS), "both quarantined, as every replica sees"
    assert "stub_workers_quarantined 2.0" in other.get("/metrics").text
    job_id = stub.submit("a calm sea", **SMALL)
    time.sleep(2)
    assert stub.job(job_id)["status"] == "queued", "no quarantined worker takes it"
    for worker in fleet["workers"]:
        worker.wait_for_event("the orchestrator gives this worker no jobs", timeout_s=QUARANTINE_S)
    view = wait_final(stub, job_id, QUARANTINE_S + 60)
    assert view["status"] == "completed", "a worker came back by itself once its quarantine ran out"
    assert time.monotonic() - quarantined >= QUARANTINE_S - 3


def test_a_replica_killed_mid_run_loses_no_job(fleet: dict[str, Any]) -> None:
    first, second = fleet["replicas"]
    balancer: Balancer = fleet["balancer"]
    jobs = [second.submit(f"a kite {n} [tiny:pace=0.5]", **SMALL | {"num_inference_steps": 3}) for n in range(6)]
    wait_job(second, jobs[0], lambda v: v["status"] == "running", 60, "the first job to run")
    # The workers hold connections to the replica about to die (the balancer takes turns: one comes soon).
    wait_for(lambda: balancer.open_to(first.port) > 0, 30, what="a worker's connection to the first replica")
    first.kill()  # SIGKILL: no clean shutdown; those connections are cut with it
    views = [wait_final(second, job_id, 180) for job_id in jobs]
    assert [v["status"] for v in views] == ["completed"] * len(jobs), [v["error"] for v in views]
    first.start()  # it comes back on the same database and serves the same jobs
    assert {first.job(job_id)["status"] for job_id in jobs} == {"completed"}
    for worker in fleet["workers"]:
        assert worker.alive(), worker.log_tail()
    outboxes = [w.outbox for w in fleet["workers"]]
    wait_for(lambda: not any(any(o.iterdir()) for o in outboxes if o.exists()), 30, what="every status delivered")
