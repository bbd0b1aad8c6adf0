"""Live progress under load: what event streams cost the stub, measured against a real stub process.

- `event_latency_ms_*`: from a worker's progress report (just before its POST is sent) to the event arriving on
  a client's stream of that job (`GET /v1/jobs/{id}/events`), one report at a time, 20 ms apart; measured with
  no other stream open and with the idle streams below open.
- `stub_rss_mb_*`: the stub's resident memory before any stream, with STREAMS idle streams open (each following
  a queued job of its own that never changes: what scripts waiting on their jobs look like) in each round, and
  after closing them; per stream from the first opening.
- `claim_ms_*`: `POST /internal/buffer/jobs/claim` latency (each a write transaction, fsynced) with no stream
  open and with the idle streams open. Both arms run in each of ROUNDS rounds, each going first in turn, and each
  arm's samples are pooled, so that a shared machine's drift over the run falls on both alike.

Prints the figures and writes them as JSON (default bench/results/events.json). Not a unit test.
Command: `.venv/bin/python bench/bench_events.py` (one to two minutes on 2 cores).
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
    parser.add_argument("--claims", type=int, default=100, help="per arm and round")
    parser.add_argument("--events", type=int, default=100, help="per arm and round")
    parser.add_argument("--rounds", type=int, default=4)
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
                "LEASE_SECONDS": "3600",  # the claimed jobs are never renewed: none may come back
                "STREAMS_PER_CLIENT": str(args.streams + 10),
                "STREAMS_MAX": str(args.streams + 10),
                "MAX_QUEUED_JOBS": str(args.streams + 10 * args.claims * args.rounds),
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
    """Rounds of both arms, no stream open and the idle streams open, in turn first (so that neither always
    follows the other's opening or closing); each arm's figures pooled over the rounds."""
    arms: dict[str, dict[str, list[float]]] = {arm: {"claims": [], "events": []} for arm in ("without", "with")}
    rss: dict[str, list[float]] = {"before": [], "with": [], "after": []}
    open_s: list[float] = []
    opened = 0

    def measure(client: httpx.Client, arm: str) -> None:
        time.sleep(3)  # settled: the streams opened have replayed their one event, those closed are gone
        rss["before" if arm == "without" and not rss["with"] else "with" if arm == "with" else "after"].append(
            rss_mb(stub)
        )
        arms[arm]["claims"] += claim_latencies(stub, client, args.claims)
        arms[arm]["events"] += event_latencies(stub, client, args.events)

    with httpx.Client(base_url=stub.url, timeout=30) as client:
        parked = [
            client.post("/v1/jobs", json={"prompt": f"parked {i}", **PARKED}).json()["job_id"]
            for i in range(args.streams)
        ]
        claim_latencies(stub, client, 20)  # warm-up: connections, caches, the first pages of the file
        event_latencies(stub, client, 20)
        for n in range(args.rounds):
            if n % 2 == 0:
                measure(client, "without")
            started = time.perf_counter()
            with IdleStreams(stub.port, parked) as streams:
                open_s.append(time.perf_counter() - started)
                opened = streams.opened
                measure(client, "with")
            if n % 2 == 1:
                measure(client, "without")
    without, with_streams = arms["without"], arms["with"]
    return {
        "streams": opened,
        "rounds": args.rounds,
        "streams_open_s": round(statistics.median(open_s), 2),
        "event_latency_ms_no_streams": summary(without["events"]),
        "event_latency_ms_with_streams": summary(with_streams["events"]),
        # The first opening: later ones reuse what the allocator kept (Python seldom hands memory back).
        "stub_rss_mb_before_any_stream": rss["before"][0],
        "stub_rss_mb_with_streams_each_round": rss["with"],
        "stub_rss_mb_after_closing_them": rss["after"],
        "stub_kb_per_stream": round((rss["with"][0] - rss["before"][0]) * 1024 / max(1, opened), 1),
        "claim_ms_no_streams": summary(without["claims"]),
        "claim_ms_with_streams": summary(with_streams["claims"]),
        "claim_median_ratio_with_vs_without": round(
            statistics.median(with_streams["claims"]) / statistics.median(without["claims"]), 3
        ),
    }


if __name__ == "__main__":
    raise SystemExit(main())
