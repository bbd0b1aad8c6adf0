"""Slots (GPU_DEVICES) and pipelining, end to end: a real worker process (two CPU slots, tiny model, local
storage, every upload delayed UPLOAD_DELAY_S as from a rented box to B2) against a real orchestrator stub,
through a recording proxy, on loopback.

One worker serves every test here, in order, because each start costs seconds of model loading: both slots
run jobs side by side (image-to-video is off, so they claim text-to-video jobs only); then slot 1's GPU
process is killed until the slot goes out; then slot 0, alone, shows pipelining, the backpressure of an
orchestrator outage, and the SIGTERM drain that ends the worker. Timings on this shared 2-core machine vary
a lot, so the assertions are about order and counts, never durations.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.http_servers import free_port
from support.procs import WorkerProcess, WorkerSet, wait_final, wait_job
from support.slots import DelayedUploadWorker, StatusProxy
from support.stubs import StubProcess, wait_for

# About a second or two of generation per job on 2 idle cores.
JOB = {"width": 128, "height": 128, "num_frames": 9, "num_inference_steps": 2}
UPLOAD_DELAY_S = 3.0
LEASE_S = 2.5  # shorter than an upload: only the heartbeat's job_ids keep the uploading job's lease


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def final(stub: StubProcess, job_id: str) -> dict[str, Any]:
    return wait_final(stub, job_id, 120)


@dataclass
class Box:
    start_stub: Callable[..., StubProcess]  # the module's `module_stubs`
    stub: StubProcess  # the stub the proxy forwards to
    proxy: StatusProxy
    worker: WorkerProcess
    metrics_url: str


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, module_stubs: Callable[..., StubProcess]) -> Iterator[Box]:
    root = tmp_path_factory.mktemp("box")
    workers = WorkerSet()
    stub = module_stubs(LEASE_SECONDS=LEASE_S)
    port = free_port()
    with StatusProxy(stub.url) as proxy:
        worker = workers.add(
            DelayedUploadWorker.buffer(
                root / "worker",
                proxy.url,
                BUFFER_WORKER_ID="box",
                GPU_DEVICES="cpu,cpu",
                UPLOAD_DELAY_S=str(UPLOAD_DELAY_S),
                METRICS_PORT=str(port),
                HOST="127.0.0.1",
                HEARTBEAT_INTERVAL_S="0.5",
                DRAIN_TIMEOUT_S="60",
                OUTBOX_FLUSH_TIMEOUT_S="30",
                OMP_NUM_THREADS="1",  # two GPU processes on two cores
                I2V_ENABLED="false",  # image-to-video off: the box claims text-to-video jobs only
            )
        )
        try:
            for slot in (0, 1):
                worker.wait_for_event("claiming jobs", slot=slot)
            yield Box(module_stubs, stub, proxy, worker, f"http://127.0.0.1:{port}/metrics")
        finally:
            workers.close()


# ---- two CPU slots ---------------------------------------------------------------------------------------


def test_two_cpu_slots_claim_and_finish_jobs_at_the_same_time(box: Box) -> None:
    stub, worker, proxy = box.stub, box.worker, box.proxy
    image_job = stub.submit("the picture comes alive", image_url="http://127.0.0.1:9/cat.png", **JOB)
    jobs = [stub.submit(f"two slots {i}", seed=i, **JOB) for i in range(3)]
    views = {job_id: final(stub, job_id) for job_id in jobs}

    assert all(v["status"] == "completed" and v["attempts"] == 1 for v in views.values()), views
    # I2V_ENABLED=false: every claim asks for text-to-video only, so the image job, older, waits for another box.
    claims = [seen.body for seen in proxy.claims()]
    assert claims and all(c["capabilities"]["modes"] == ["t2v"] for c in claims), claims
    assert (stub.job(image_job)["status"], stub.job(image_job)["attempts"]) == ("queued", 0)
    assert stub.post(f"/v1/jobs/{image_job}/cancel", key=None).status_code == 200
    assert {v["worker_id"] for v in views.values()} == {"box-0", "box-1"}, "each slot reports as <id>-<n>"
    # Generation intervals (GPU process busy) of the two slots overlap: they really ran side by side.
    spans = {}
    for job_id in jobs:
        start = worker.wait_for_event("generation started", 5, job_id=job_id)
        end = worker.wait_for_event("video generated", 5, job_id=job_id)
        spans[job_id] = (start["slot"], ts(start), ts(end))
    overlapping = [
        (a, b)
        for a in jobs
        for b in jobs
        if spans[a][0] == 0 and spans[b][0] == 1 and spans[a][1] < spans[b][2] and spans[b][1] < spans[a][2]
    ]
    assert overlapping, spans
    # Each slot has its own heartbeat, and says which slot and device it is.
    for n in (0, 1):
        idle = {"index": n, "device": "cpu", "state": "idle", "reason": None}
        wait_for(lambda n=n, idle=idle: (b := proxy.beats(f"box-{n}")) and b[-1]["slot"] == idle, 10, what="idle")
    workers = {w["worker_id"]: w for w in stub.get("/v1/queue").json()["workers"]}
    assert {"box-0", "box-1"} <= set(workers) and workers["box-1"]["gpu"]["name"] == "cpu"


def test_a_slot_whose_gpu_process_dies_three_times_goes_out_and_the_other_goes_on(box: Box) -> None:
    """Slot 1 stays out for the rest of the module."""
    stub, worker, proxy = box.stub, box.worker, box.proxy
    killed: list[int] = []
    while not worker.events("slot out", slot=1):
        ready = worker.events("model ready", slot=1)
        pid = ready[-1]["gpu_pid"]
        assert pid not in killed, "a restart brings a new GPU process"
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        assert len(killed) <= 3, worker.log_tail()
        seen = len(ready)
        wait_for(
            lambda seen=seen: worker.events("slot out", slot=1) or len(worker.events("model ready", slot=1)) > seen,
            90,
            what="slot 1 to restart its GPU process or go out",
        )
    assert len(killed) == 3, "three crashes take a slot out"
    out = worker.events("slot out", slot=1)[0]
    assert out["level"] == "error" and "3 times" in out["reason"]

    # The box goes on: slot 0 takes every new job.
    after = stub.submit("after slot 1 went out", **JOB)
    assert final(stub, after)["worker_id"] == "box-0"
    assert worker.alive()
    # The out slot says so in its heartbeats, its logs (above) and the metrics.
    beat = wait_for(lambda: (b := proxy.beats("box-1")) and b[-1]["slot"]["state"] == "out" and b[-1], 10)
    assert beat["state"] == "draining" and "3 times" in beat["slot"]["reason"], "out: takes no jobs"
    text = httpx.get(box.metrics_url, timeout=5).text
    assert 'fastwan_slot_state{slot="1",state="out",worker_id="box-1"} 1.0' in text
    assert 'fastwan_slot_state{slot="0",state="idle",worker_id="box-0"} 1.0' in text
    assert 'fastwan_jobs_total{code="",outcome="completed",slot="0",worker_id="box-0"}' in text


# ---- slot 0 alone: pipelining, backpressure, drain ---------------------------------------------------


def test_next_job_starts_while_the_last_uploads_and_both_leases_stay_renewed(box: Box) -> None:
    stub, worker, proxy = box.stub, box.worker, box.proxy
    # The second job is paced (pipelines/tiny.py: a second a step, as on a GPU), so that heartbeats come while
    # it generates and its predecessor still uploads.
    jobs = [stub.submit(f"pipelined {i}{' [tiny:pace=1]' if i else ''}", seed=i, **JOB) for i in range(2)]
    views = [final(stub, j) for j in jobs]
    # The proxy records a request once its answer is back: a moment after the stub shows the job final.
    wait_for(lambda: all(proxy.finals(j) for j in jobs), 10, what="the proxy to record both final statuses")

    # Every upload took UPLOAD_DELAY_S > LEASE_S, and no job went back to the queue: the heartbeat renewed
    # the lease of the uploading job as well as the generating one.
    assert [(v["status"], v["attempts"], v["requeues"]) for v in views] == [("completed", 1, [])] * 2, views
    for earlier, later in zip(jobs, jobs[1:], strict=False):
        started = worker.events("generation started", job_id=later)[0]
        delivered = proxy.finals(earlier)[0]
        assert ts(started) < ts(worker.events("final status delivered", job_id=earlier)[0]), "pipelined"
        claim_of_later = [c for c in proxy.claims() if c.at < delivered.at]
        assert len(claim_of_later) >= jobs.index(later) + 1, "the next claim came before the report"
        # The GPU waited for neither the upload nor the report.
        assert started["gpu_idle_ms"] < UPLOAD_DELAY_S * 1000, started
    both = [b for b in proxy.beats("box-0") if set(jobs[:2]) <= set(b["job_ids"])]
    assert both, "a heartbeat named both held jobs"
    assert all(len(b["job_ids"]) <= 2 for b in proxy.beats("box-0")), "never more than two jobs held"
    assert both[0]["job_id"] == jobs[1], "job_id is the one generating"
    statuses = [s.body for j in jobs for s in proxy.requests(f"/jobs/{j}/status")]
    assert [s["attempt"] for s in statuses] == [1] * 4, "every status carries its attempt"


def test_orchestrator_down_a_slot_holds_one_finished_job_stops_claiming_then_delivers(box: Box, tmp_path: Path) -> None:
    worker = box.worker
    # A stub with long leases: while it is down its clock runs on, and a short lease would expire.
    box.stub = stub = box.start_stub(LEASE_SECONDS=120)
    box.proxy.target = stub.url
    jobs = [stub.submit(f"outage {i}", seed=i, **JOB) for i in range(2)]
    wait_job(stub, jobs[0], lambda v: v["status"] == "running", 60, "the first job running")
    stub.kill()

    worker.wait_for_event("video generated", 60, job_id=jobs[0])
    # The next claim went out at once (pipelined), and failed; once the report failed too, claiming paused.
    paused = worker.wait_for_event("claiming paused", 60)
    claims_seen = len(box.proxy.claims())
    wait_for(lambda: (worker.outbox / f"{jobs[0]}.json").exists(), 30, what="the result on disk")
    # Several delivery retries later, still nothing new was claimed or started.
    wait_for(lambda: len(worker.events("orchestrator call failed, retrying", job_id=jobs[0])) >= 2, 60)
    assert not worker.events("generation started", job_id=jobs[1])
    assert [p.name for p in worker.outbox.iterdir()] == [f"{jobs[0]}.json"], "one finished job held"
    claim_retries = worker.events("orchestrator call failed, retrying", call="claim")
    assert not [e for e in claim_retries if ts(e) > ts(paused)], "no claim attempt while the report fails"

    stub.start()
    views = [final(stub, j) for j in jobs]
    assert [(v["status"], v["attempts"]) for v in views] == [("completed", 1)] * 2, views
    assert len(box.proxy.claims()) == claims_seen + 1
    wait_for(lambda: not list(worker.outbox.iterdir()), 30, what="the outbox to empty")


def test_sigterm_with_two_jobs_held_reports_both_and_exits_0(box: Box) -> None:
    """The last test of the module: it ends the worker. SIGTERM drains every slot, the out one too."""
    worker, proxy = box.worker, box.proxy
    stub = box.stub
    jobs = [stub.submit(f"drain {i}", seed=i, **JOB) for i in range(3)]
    worker.wait_for_event("generation started", 120, job_id=jobs[1])
    assert not proxy.finals(jobs[0]), "the first job still uploads"

    worker.signal(signal.SIGTERM)
    assert worker.wait(120) == 0

    views = [stub.job(j) for j in jobs]
    assert [v["status"] for v in views[:2]] == ["completed", "completed"], views
    assert (views[2]["status"], views[2]["attempts"]) == ("queued", 0), "nothing claimed after SIGTERM"
    draining = [b for b in proxy.beats("box-0") if b["state"] == "draining"]
    assert draining and set(draining[0]["job_ids"]) == set(jobs[:2])
    assert not list(worker.outbox.iterdir())
    assert {e.get("slot") for e in worker.events("buffer worker stopped")} == {0, 1}
