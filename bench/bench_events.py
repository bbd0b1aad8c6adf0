"""Live progress under load: what event streams cost the stub, measured against a real stub process.

- `event_latency_ms_*`: from a worker's progress report (just before its POST is sent) to the event arriving on
  a client's stream of that job (`GET /v1/jobs/{id}/events`), one report at a time, 20 ms apart; measured with
  no other stream open and with the idle streams below open.
- `stub_rss_mb_*`: the stub's resident memory before and with STREAMS idle streams (each following a queued job
  of its own that never changes: what scripts waiting on their jobs look like), and per stream.
- `claim_ms_*`: `POST /internal/buffer/jobs/claim` latency (each a write transaction, fsynced), first with no
  stream, then with the idle streams, then with none again; the ratio compares the middle arm to the mean of
  the two around it, so that a drift of the shared machine over the run shows as a gap between those two.

Prints the figures and writes them as JSON (default bench/results/events.json). Not a unit test.
Command: `.venv/bin/python bench/bench_events.py` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loopback helpers the tests use

from support.stubs import API_KEY, StubProcess  # noqa: E402

KEY = {"X-Internal-Api-Key": API_KEY}
CLAIMABLE = {"width": 256, "height": 256, "num_frames": 5}
PARKED = {"width": 256, "height": 256, "num_frames": 121}  # claims below ask for at most 81 frames: never claimed
CAPS = {"max_frames": 81}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "p99": round(percentile(values, 0.99), 2),
        "mean": round(statistics.fmean(values), 2),
    }


class IdleStreams:
    """Many well-behaved idle clients in one background event loop: each holds a stream open and reads what
    comes (keep-alive comments only, since its job never changes)."""

    def __init__(self, port: int, job_ids: list[str]) -> None:
        self._port = port
        self._job_ids = job_ids
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: list[asyncio.Task[None]] = []
        self.opened = 0

    def __enter__(self) -> IdleStreams:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open_all(), self._loop).result(timeout=300)
        return self

    async def _open_all(self) -> None:
        ready: list[asyncio.Future[None]] = []
        for job_id in self._job_ids:
            started: asyncio.Future[None] = self._loop.create_future()
            ready.append(started)
            self._tasks.append(asyncio.create_task(self._hold(job_id, started)))
            if len(ready) % 50 == 0:
                await asyncio.gather(*ready[-50:])  # 50 at a time: the stub's accept queue is not the test
        await asyncio.gather(*ready)

    async def _hold(self, job_id: str, started: asyncio.Future[None]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
        writer.write(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            started.set_exception(RuntimeError(head.decode(errors="replace")))
            return
        self.opened += 1
        started.set_result(None)
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()

    def __exit__(self, *exc: object) -> None:
        async def cancel() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def claim_latencies(stub: StubProcess, client: httpx.Client, n: int) -> list[float]:
    for i in range(n):
        assert client.post("/v1/jobs", json={"prompt": f"claimable {i}", **CLAIMABLE}).status_code == 201
    times = []
    for _ in range(n):
        started = time.perf_counter()
        answer = client.post(
            "/internal/buffer/jobs/claim",
            json={"worker_id": "bench-claims", "capabilities": CAPS},
            headers=KEY,
        )
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text
    return times


def event_latencies(stub: StubProcess, client: httpx.Client, n: int) -> list[float]:
    """Progress reports of one held job, each timed until its event arrives on the job's stream."""
    job_id = client.post("/v1/jobs", json={"prompt": "followed", **CLAIMABLE}).json()["job_id"]
    claimed = client.post(
        "/internal/buffer/jobs/claim", json={"worker_id": "bench-w", "capabilities": CAPS}, headers=KEY
    ).json()["job"]
    assert claimed["job_id"] == job_id
    arrived: dict[int, float] = {}
    seen = threading.Condition()

    def follow() -> None:
        with (
            httpx.Client(base_url=stub.url, timeout=30) as reader,
            reader.stream("GET", f"/v1/jobs/{job_id}/events") as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
                    if data["type"] == "progress":
                        with seen:
                            arrived[data["step"]] = time.perf_counter()
                            seen.notify_all()
                    elif data["type"] in ("completed", "failed", "cancelled"):
                        return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.5)  # the stream is open and has replayed queued and claimed
    times = []
    for step in range(1, n + 1):
        body = {"worker_id": "bench-w", "stage": "denoising", "progress": step / (n + 1), "step": step}
        started = time.perf_counter()
        assert client.post(f"/internal/videogen/jobs/{job_id}/progress", json=body, headers=KEY).status_code == 204
        with seen:
            assert seen.wait_for(lambda s=step: s in arrived, timeout=10), f"event {step} never arrived"
        times.append((arrived[step] - started) * 1000)
        time.sleep(0.02)
    error = {"code": "internal", "message": "bench over", "retryable": False}
    client.post(
        f"/internal/buffer/jobs/{job_id}/status",
        json={"worker_id": "bench-w", "status": "failed", "error": error},
        headers=KEY,
    )
    thread.join(10)
    return times


def rss_mb(stub: StubProcess) -> float:
    assert stub.proc is not None
    return round(psutil.Process(stub.proc.pid).memory_info().rss / 2**20, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--claims", type=int, default=150)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "events.json")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.streams + 256)), hard))

    with tempfile.TemporaryDirectory() as tmp:
        stub = StubProcess(
            db=Path(tmp) / "stub.sqlite3",
            log_path=Path(tmp) / "stub.log",
            env={
                "LOG_LEVEL": "WARNING",
                "STREAMS_PER_CLIENT": str(args.streams + 10),
                "STREAMS_MAX": str(args.streams + 10),
                "MAX_QUEUED_JOBS": str(args.streams + 10 * args.claims),
            },
        ).start()
        try:
            figures = run(stub, args)
        finally:
            stub.kill()
            stub.http.close()
    figures["command"] = "python bench/bench_events.py " + " ".join(sys.argv[1:])
    figures["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"written to {args.out}")
    return 0


def run(stub: StubProcess, args: argparse.Namespace) -> dict[str, Any]:
    with httpx.Client(base_url=stub.url, timeout=30) as client:
        parked = [
            client.post("/v1/jobs", json={"prompt": f"parked {i}", **PARKED}).json()["job_id"]
            for i in range(args.streams)
        ]
        claim_latencies(stub, client, 20)  # warm-up: connections, caches, the first pages of the file
        event_latencies(stub, client, 20)
        time.sleep(1)
        rss_before = rss_mb(stub)
        events_alone = event_latencies(stub, client, args.events)
        claims_before = claim_latencies(stub, client, args.claims)
        opened_at = time.perf_counter()
        with IdleStreams(stub.port, parked) as streams:
            open_s = time.perf_counter() - opened_at
            time.sleep(3)  # settled: every stream has replayed its one event and waits
            rss_with = rss_mb(stub)
            claims_with = claim_latencies(stub, client, args.claims)
            events_with = event_latencies(stub, client, args.events)
            opened = streams.opened
        time.sleep(3)  # the stub has seen every stream go
        claims_after = claim_latencies(stub, client, args.claims)
    around = (statistics.median(claims_before) + statistics.median(claims_after)) / 2
    return {
        "streams": opened,
        "streams_open_s": round(open_s, 2),
        "event_latency_ms_no_streams": summary(events_alone),
        "event_latency_ms_with_streams": summary(events_with),
        "stub_rss_mb_before": rss_before,
        "stub_rss_mb_with_streams": rss_with,
        "stub_kb_per_stream": round((rss_with - rss_before) * 1024 / max(1, opened), 1),
        "claim_ms_no_streams_before": summary(claims_before),
        "claim_ms_with_streams": summary(claims_with),
        "claim_ms_no_streams_after": summary(claims_after),
        "claim_median_ratio_with_vs_without": round(statistics.median(claims_with) / around, 3),
    }


if __name__ == "__main__":
    raise SystemExit(main())
