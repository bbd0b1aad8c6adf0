"""The orchestrator as a fleet's queue, side by side in one run: prints the figures, writes
bench/results/fleet.json. Real stub processes on loopback; PostgreSQL is a real server from Debian's packages
(tests/support/postgres.py), fsync on; the workers are simulated over HTTP (only their claims matter here).

1. Claims: `--claimers` (200) simulated workers claim `--jobs` queued jobs as fast as they can (each claims
   again as soon as it is answered), on SQLite (one stub), PostgreSQL with one replica, and PostgreSQL with
   two replicas (half the workers ask each); then the same with 10 workers. Claims per second (jobs handed out
   / wall time, the last empty claims included) and the p50 and p99 latency of a claim that got a job.
2. Submission to start: 4 idle simulated workers, jobs submitted one at a time at random moments; the time
   from the submission's answer to the claim answer that carries the job, with waiting claims (v1.3 long
   poll, `wait_s` 20, claim again at once) and with polling (no wait, sleep `CLAIM_POLL_S` 1.5 s after an
   empty answer, as a v1.2 worker); and how many claim requests each made per second.
3. A big table: claim latency and `GET /v1/jobs` (50 newest, with their total) with 100,000 finished jobs in
   the table (and their 500,000 events in the log) against an empty one (the same queued jobs on top), on
   SQLite and on PostgreSQL.

    nice .venv/bin/python bench/fleet_bench.py [--claimers 200] [--jobs 400] [--big 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the stub processes and the PostgreSQL server the tests use

from support.postgres import PostgresServer  # noqa: E402
from support.stubs import API_KEY, StubProcess, Stubs  # noqa: E402

from orchestrator_stub.db import Store  # noqa: E402
from worker_app_fastwan.core.schema import JobInput  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fleet.json"
JOB = {"width": 256, "height": 256, "num_frames": 5, "num_inference_steps": 1}
STUB_ENV = {
    "LEASE_SECONDS": "300",
    "MAX_QUEUED_JOBS": "100000",
    "CLAIM_WAIT_MAX_S": "30",
    "LOG_LEVEL": "WARNING",  # a log line per claim would be part of what is measured
}


class Databases:
    """Fresh databases for `Stubs`: files in a folder, or new databases on the server."""

    def __init__(self, backend: str, folder: Path, server: PostgresServer | None) -> None:
        self.backend, self.folder, self.server = backend, folder, server

    def fresh(self) -> str:
        if self.server is None:
            return str(self.folder / f"{uuid.uuid4().hex[:8]}.sqlite3")
        return self.server.url(self.server.create_database(f"b_{uuid.uuid4().hex[:12]}"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def fill(database: str, n: int, **job: Any) -> None:
    """`n` queued jobs, straight into the store (the submissions are not what is measured)."""
    store = Store(database, lease_seconds=300, max_attempts=3)
    try:
        for i in range(n):
            store.create_job(
                JobInput(prompt=f"bench {i}", **job), notify_url=None, idempotency_key=None, fingerprint="f"
            )
    finally:
        store.close()


# ---- 1. claims under 200 workers ------------------------------------------------------------------------------


async def _claim_storm(urls: list[str], claimers: int) -> tuple[list[float], float, int, int]:
    latencies: list[float] = []
    handed: list[str] = []
    errors: list[int] = []

    async def claimer(n: int, http: httpx.AsyncClient) -> None:
        url = f"{urls[n % len(urls)]}/internal/buffer/jobs/claim"
        while True:
            started = time.perf_counter()
            try:
                response = await http.post(url, json={"worker_id": f"bench-{n}", "gpu_class": "bench"})
            except httpx.TransportError:
                errors.append(n)  # as a worker would: again (a job handed out on a lost answer is not counted)
                continue
            if response.status_code == 204:
                return
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
            handed.append(response.json()["job"]["job_id"])

    limits = httpx.Limits(max_connections=claimers, max_keepalive_connections=claimers)
    async with httpx.AsyncClient(headers={"X-Internal-Api-Key": API_KEY}, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(claimer(n, http) for n in range(claimers)))
        wall = time.perf_counter() - started
    return latencies, wall, len(handed) - len(set(handed)), len(errors)


def claims(stubs: Stubs, backend: str, replicas: int, args: argparse.Namespace) -> dict[str, Any]:
    first = stubs.start(**STUB_ENV)
    started = [first] + [stubs.start(database=first.database, **STUB_ENV) for _ in range(replicas - 1)]
    fill(first.database, args.jobs, **JOB)
    latencies, wall, twice, errors = asyncio.run(_claim_storm([s.url for s in started], args.claimers))
    for stub in started:
        stub.kill()
    assert twice == 0, f"{twice} jobs handed out twice"
    return {
        "backend": backend,
        "replicas": replicas,
        "claimers": args.claimers,
        "jobs_claimed": len(latencies),
        "claims_per_s": round(len(latencies) / wall, 1),
        "p50_ms": ms(pct(latencies, 0.50)),
        "p99_ms": ms(pct(latencies, 0.99)),
        "transport_errors": errors,
    }


# ---- 2. submission to start: long poll vs polling ---------------------------------------------------------------


async def _start_latency(stub: StubProcess, wait: bool, jobs: int, poll_s: float) -> dict[str, Any]:
    seen: dict[str, float] = {}
    requests = 0
    stop = asyncio.Event()

    async def worker(n: int, http: httpx.AsyncClient) -> None:
        nonlocal requests
        body = {"worker_id": f"idle-{n}", "gpu_class": "bench", "wait_s": 20 if wait else 0}
        while not stop.is_set():
            requests += 1
            response = await http.post(f"{stub.url}/internal/buffer/jobs/claim", json=body)
            if response.status_code == 200:
                seen[response.json()["job"]["job_id"]] = time.perf_counter()
                continue  # the simulated job takes no time: claim again
            waited = float(response.headers.get("X-Claim-Wait-S", "0")) > 0
            if not waited:
                await asyncio.sleep(poll_s)

    async with httpx.AsyncClient(headers={"X-Internal-Api-Key": API_KEY}, timeout=60) as http:
        workers = [asyncio.create_task(worker(n, http)) for n in range(4)]
        await asyncio.sleep(1.0)  # every worker idle: waiting, or between polls
        started, submitted = time.perf_counter(), {}
        rng = random.Random(7)
        for i in range(jobs):
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            response = await http.post(f"{stub.url}/v1/jobs", json={"prompt": f"start {i}", **JOB})
            submitted[response.json()["job_id"]] = time.perf_counter()
        deadline = time.perf_counter() + 30
        while len(seen) < jobs and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        wall = time.perf_counter() - started
        stop.set()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    delays = [seen[j] - t for j, t in submitted.items() if j in seen]
    return {
        "mode": "long poll (wait_s 20)" if wait else f"polling (CLAIM_POLL_S {poll_s:g})",
        "jobs": len(delays),
        "mean_ms": ms(statistics.fmean(delays)),
        "p50_ms": ms(pct(delays, 0.5)),
        "p99_ms": ms(pct(delays, 0.99)),
        "claim_requests_per_s": round(requests / wall, 2),
    }


def start_latency(stubs: Stubs, backend: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    stub = stubs.start(**STUB_ENV)
    rows = []
    for wait in (True, False):
        rows.append({"backend": backend} | asyncio.run(_start_latency(stub, wait, args.start_jobs, 1.5)))
    stub.kill()
    return rows


# ---- 3. a big table ---------------------------------------------------------------------------------------------


EVENTS_PER_JOB = ("queued", "claimed", "running", "progress", "completed")


def bulk_finished(database: str, n: int) -> None:
    """`n` completed jobs with realistic rows (input and result JSON) and the events such a job leaves in the log
    (queued, claimed, running, a progress step, completed), in one transaction per 10,000 jobs."""
    store = Store(database, lease_seconds=300, max_attempts=3)
    job_input = json.dumps(JobInput(prompt="x" * 200, **JOB).model_dump(mode="json", exclude_none=True))
    now = time.time() - n
    try:
        for start in range(0, n, 10_000):
            rows, events = [], []
            for i in range(start, min(n, start + 10_000)):
                job_id = uuid.uuid4().hex
                result = {"job_id": job_id, "video_url": f"file:///v/videos/{job_id}/{'0' * 64}.mp4", "bytes": 123}
                rows.append(
                    {"j": job_id, "input": job_input, "result": json.dumps(result), "t": now + i, "done": now + i + 5}
                )
                data = json.dumps({"job_id": job_id, "status": "completed", "progress": 1.0, "result": result})
                events += [
                    {"j": job_id, "type": kind, "at": now + i + k, "data": data}
                    for k, kind in enumerate(EVENTS_PER_JOB)
                ]
            with store.db.engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO jobs (job_id, status, input, mode, width, height, num_frames, attempt, stage,"
                        " progress, result, final_by, created_at, updated_at, completed_at)"
                        " VALUES (:j, 'completed', :input, 't2v', 256, 256, 5, 1, 'done', 1.0, :result, 'w', :t,"
                        " :done, :done)"
                    ),
                    rows,
                )
                conn.execute(
                    sa.text("INSERT INTO job_events (job_id, type, at, data) VALUES (:j, :type, :at, :data)"), events
                )
        if store.db.postgres:
            with store.db.engine.connect() as conn:
                autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
                autocommit.exec_driver_sql("VACUUM ANALYZE jobs")
                autocommit.exec_driver_sql("VACUUM ANALYZE job_events")
    finally:
        store.close()


def _timed(call: Callable[[], httpx.Response], n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = call()
        times.append(time.perf_counter() - started)
        assert response.status_code in (200, 204), response.text
    return times


def _measure(stub: StubProcess, samples: int) -> dict[str, float]:
    http = httpx.Client(base_url=stub.url, headers={"X-Internal-Api-Key": API_KEY}, timeout=60)
    body = {"worker_id": "big-1", "gpu_class": "bench"}
    http.get("/v1/jobs")  # warm
    claim = _timed(lambda: http.post("/internal/buffer/jobs/claim", json=body), samples)
    listing = _timed(lambda: http.get("/v1/jobs", params={"limit": 50}), samples)
    held = _timed(lambda: http.get("/v1/jobs", params={"status": "claimed", "limit": 50}), samples)
    scrape = _timed(lambda: http.get("/metrics"), max(5, samples // 5))
    http.close()
    return {
        "claim_p50_ms": ms(pct(claim, 0.5)),
        "claim_p99_ms": ms(pct(claim, 0.99)),
        "list_p50_ms": ms(pct(listing, 0.5)),
        "list_p99_ms": ms(pct(listing, 0.99)),
        "list_by_status_p50_ms": ms(pct(held, 0.5)),
        "metrics_p50_ms": ms(pct(scrape, 0.5)),
    }


def big_table(stubs: Stubs, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": backend, "finished_jobs": args.big}
    for label, finished in (("empty", 0), ("big", args.big)):
        stub = stubs.start(**STUB_ENV)
        stub.kill()  # the schema is made; the rows go in while nothing else runs
        if finished:
            bulk_finished(stub.database, finished)
        fill(stub.database, args.samples, **JOB)
        stub.start()
        row[label] = _measure(stub, args.samples)
        stub.kill()
    row["ratios"] = {
        key: round(row["big"][key] / row["empty"][key], 2) for key in row["empty"] if row["empty"][key] > 0
    }
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claimers", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--start-jobs", type=int, default=25)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    server = PostgresServer.start(durable=True)
    report: dict[str, Any] = {"load_average_at_start": os.getloadavg(), "cpus": os.cpu_count()}
    try:
        backends = {
            "sqlite": Stubs(folder / "sqlite", Databases("sqlite", folder / "sqlite", None)),  # type: ignore[arg-type]
            "postgresql": Stubs(folder / "pg", Databases("postgresql", folder / "pg", server)),  # type: ignore[arg-type]
        }
        # The figure asked for (`--claimers`, 200), and the same with 10 workers: where the curve bends.
        report["claims"] = [
            claims(backends[backend], backend, replicas, argparse.Namespace(**vars(args) | {"claimers": n}))
            for n in (args.claimers, 10)
            for backend, replicas in (("sqlite", 1), ("postgresql", 1), ("postgresql", 2))
        ]
        for row in report["claims"]:
            print(
                f"claims  {row['backend']:<10} x{row['replicas']}  {row['claimers']:>3} workers"
                f"  {row['claims_per_s']:>7} claims/s  p50 {row['p50_ms']:>8} ms  p99 {row['p99_ms']:>8} ms"
                f"  ({row['jobs_claimed']} jobs)"
            )
        report["submission_to_start"] = start_latency(backends["sqlite"], "sqlite", args) + start_latency(
            backends["postgresql"], "postgresql", args
        )
        for row in report["submission_to_start"]:
            print(
                f"start   {row['backend']:<10} {row['mode']:<28} mean {row['mean_ms']:>8} ms  p50 {row['p50_ms']:>8} ms"
                f"  p99 {row['p99_ms']:>8} ms  {row['claim_requests_per_s']} claims/s"
            )
        report["big_table"] = [big_table(backends[b], b, args) for b in ("sqlite", "postgresql")]
        for row in report["big_table"]:
            for label in ("empty", "big"):
                print(f"table   {row['backend']:<10} {label:<5} {row[label]}")
            print(f"table   {row['backend']:<10} big/empty {row['ratios']}")
    finally:
        for stubs in locals().get("backends", {}).values():
            for stub in stubs.started:  # killed without printing their logs (Stubs.close would)
                stub.kill()
        server.stop()
    report["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
