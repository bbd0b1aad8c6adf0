"""`make soak`: the chaos run. Method and figures: RELIABILITY.md.

The stub, two buffer-mode workers (behind a TCP proxy that can refuse connections) and a queue-mode worker
fed by the stub's Salad-style dispatcher, all with the tiny backend and local storage. Jobs are submitted
at a steady rate while, at random moments, a worker is SIGKILLed (and restarted), a worker is SIGTERMed
(it must drain and exit 0, then it is restarted), the stub is SIGKILLed and restarted on the same
database, and the workers are cut off from the stub for 10–20 s. Then every job must be final, every
completed job's video must be on disk with its reported size and SHA-256, and no job may have been
reported completed with two different results. Prints the figures and writes bench/results/soak.json.

`--db postgresql`: the same run on PostgreSQL (a real server from Debian's packages, fsync on) with two stub
replicas behind the proxy, which then balances between them; "the stub is SIGKILLed" kills one of the two at
random (the workers carry on through the other) and restarts it. Writes bench/results/soak-postgresql.json.

    nice .venv/bin/python bench/soak.py [--jobs 300] [--max-wall-s 600] [--seed 1] [--db postgresql]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the PostgreSQL server the tests use
from soak_parts import CuttableProxy, Proc, WebhookReceiver, free_port, wait_until  # noqa: E402
from support.postgres import PostgresServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
JOB = {"width": 256, "height": 256, "num_frames": 5, "num_inference_steps": 1}
WORKER_ENV = {
    "PIPELINE_BACKEND": "tiny",
    "STORAGE_BACKEND": "local",
    "HEARTBEAT_INTERVAL_S": "1",
    "CLAIM_POLL_S": "0.3",
    "RETRY_MAX_S": "2",
    "PROGRESS_MIN_INTERVAL_S": "1",
    "DRAIN_TIMEOUT_S": "30",
    "OUTBOX_FLUSH_TIMEOUT_S": "10",
    "ALLOW_PRIVATE_IMAGE_URLS": "true",
    "OMP_NUM_THREADS": "1",  # three workers share two cores
    "LOG_LEVEL": "INFO",
}
STUB_ENV = {
    "LEASE_SECONDS": "10",
    "LEASE_CHECK_S": "0.5",
    "MAX_ATTEMPTS": "5",
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_BASE_DELAY_S": "0.5",
    "WEBHOOK_MAX_DELAY_S": "4",
    "WEBHOOK_MAX_ATTEMPTS": "20",
    "WEBHOOK_SCAN_S": "0.5",
    "DISPATCH_POLL_S": "0.5",
    "DISPATCH_RETRY_BASE_S": "0.5",
    "DISPATCH_RETRY_MAX_S": "3",
    "DISPATCH_MAX_ATTEMPTS": "30",  # a restarting queue worker is away ~30 s on two busy cores
    # Kills and outages make leases run out, which count against the workers: a quarantine, if one happens,
    # must not outlast the run.
    "QUARANTINE_S": "30",
}
FINAL = {"completed", "failed"}


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.rng = random.Random(args.seed)
        self.key = secrets.token_hex(16)
        self.hooks = WebhookReceiver(secrets.token_hex(16))
        base_env = {**os.environ, "PYTHONPATH": str(REPO), "INTERNAL_API_KEY": self.key}
        queue_port = free_port()
        self.pg = PostgresServer.start(durable=True) if args.db == "postgresql" else None
        database = self.pg.url(self.pg.create_database("soak")) if self.pg else str(workdir / "stub" / "soak.sqlite3")
        self.stubs = [
            self._stub(name, free_port(), database, queue_port, base_env)
            for name in (("stub-a", "stub-b") if self.pg else ("stub",))
        ]
        self.stub_ports = {stub.name: int(stub.env["STUB_PORT"]) for stub in self.stubs}
        self.proxy = CuttableProxy(list(self.stub_ports.values()))
        self.workers = [self._buffer(f"buffer-{i}") for i in (1, 2)] + [self._queue(queue_port)]
        self.stats = Counter[str]()
        self.submitted: list[str] = []
        self.chaos_log: list[dict[str, Any]] = []
        # Submissions and checks: the one stub directly; with replicas, either of them (the first that answers).
        self.bases = [f"http://127.0.0.1:{port}" for port in self.stub_ports.values()]
        self.http = httpx.Client(timeout=10)

    def _stub(self, name: str, port: int, database: str, queue_port: int, base_env: dict[str, str]) -> Proc:
        dispatch = ["--dispatch-to", f"http://127.0.0.1:{queue_port}/generate"]
        env = {
            **base_env,
            **STUB_ENV,
            "STUB_HOST": "127.0.0.1",
            "STUB_PORT": str(port),
            "STUB_DB": database,
            "WEBHOOK_SECRET": self.hooks.secret.decode(),
        }
        return Proc(name, [sys.executable, "-m", "orchestrator_stub", *dispatch], env, self.workdir / name)

    def _worker_env(self, name: str) -> dict[str, str]:
        folder = self.workdir / name
        return {
            **os.environ,
            **WORKER_ENV,
            "PYTHONPATH": str(REPO),
            "INTERNAL_API_KEY": self.key,
            "ORCHESTRATOR_BASE_URL": self.proxy.url,
            "STATE_DIR": str(folder / "state"),
            "LOCAL_OUTPUT_DIR": str(folder / "videos"),
        }

    def _buffer(self, name: str) -> Proc:
        env = {**self._worker_env(name), "BUFFER_WORKER_ID": f"soak-{name}"}
        return Proc(name, [sys.executable, "-m", "worker_app_fastwan", "buffer"], env, self.workdir / name)

    def _queue(self, port: int) -> Proc:
        env = {**self._worker_env("queue"), "PORT": str(port), "HOST": "127.0.0.1"}
        return Proc("queue", [sys.executable, "-m", "worker_app_fastwan", "serve"], env, self.workdir / "queue")

    # ------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        start = time.monotonic()
        for stub in self.stubs:
            self._start_stub(stub)
        for worker in self.workers:
            worker.start()
        submitter = threading.Thread(target=self._submit_all, daemon=True)
        submitter.start()
        deadline = start + self.args.max_wall_s - self.args.settle_s
        self._chaos_until(lambda: (not submitter.is_alive() and self._all_final()) or time.monotonic() > deadline)
        submitter.join(5)
        self.proxy.restore() if self.proxy._listener is None else None
        for worker in self.workers:  # anything down at the end comes back so no job waits on it
            if not worker.alive():
                worker.start()
        wait_until(self._all_final, max(0.0, start + self.args.max_wall_s - time.monotonic()), interval_s=1)
        wait_until(self._webhooks_settled, 30, interval_s=1)
        report = self._check(time.monotonic() - start)
        for worker in self.workers:
            if worker.alive():
                worker.terminate(60)
        for stub in self.stubs:
            stub.terminate(20) if stub.alive() else None
        return report

    def _start_stub(self, stub: Proc) -> None:
        stub.start()
        base = f"http://127.0.0.1:{self.stub_ports[stub.name]}"
        if not wait_until(lambda: self._get("/health", (base,)) is not None, 60, 0.2):
            raise SystemExit(f"the stub did not start; see {stub.log_path}")

    def _get(self, path: str, bases: tuple[str, ...] | None = None) -> Any:
        for base in bases or self.bases:
            try:
                response = self.http.get(base + path)
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                return response.json()
        return None

    def _post(self, path: str, **kwargs: Any) -> httpx.Response | None:
        for base in self.bases:
            try:
                return self.http.post(base + path, **kwargs)
            except httpx.HTTPError:
                continue
        return None

    def _submit_all(self) -> None:
        interval = self.args.submit_s / self.args.jobs
        for i in range(self.args.jobs):
            body = {"prompt": f"soak job {i}", "seed": i, **JOB, "notify_url": self.hooks.url}
            while True:  # the stub may be down: the Idempotency-Key makes the retry safe
                response = self._post("/v1/jobs", json=body, headers={"Idempotency-Key": f"soak-{i}"})
                if response is not None and response.status_code in (200, 201):
                    self.submitted.append(response.json()["job_id"])
                    break
                self.stats["submit_retries"] += 1
                time.sleep(0.5)
            time.sleep(interval)

    def _all_final(self) -> bool:
        if len(self.submitted) < self.args.jobs:
            return False
        views = self._views()
        return views is not None and all(v["status"] in FINAL for v in views.values())

    def _views(self) -> dict[str, dict[str, Any]] | None:
        views: dict[str, dict[str, Any]] = {}
        for offset in range(0, len(self.submitted) + 500, 500):
            page = self._get(f"/v1/jobs?limit=500&offset={offset}")
            if page is None:
                return None
            for view in page["jobs"] if isinstance(page, dict) else page:
                views[view["job_id"]] = view
        return views

    def _webhooks_settled(self) -> bool:
        views = self._views() or {}
        return all(v.get("webhook_state") in ("delivered", "gave_up") for v in views.values())

    # ------------------------------------------------------------ chaos

    def _chaos_until(self, done: Any) -> None:
        actions = [self._kill_worker, self._term_worker, self._restart_stub, self._outage]
        plan = self.rng.sample(actions, len(actions))  # each kind once first, in a random order
        while not done():
            if not wait_until(done, self.rng.uniform(*self.args.gap_s), interval_s=1):
                action = plan.pop(0) if plan else self.rng.choice(actions)
                began = time.monotonic()
                what = action()
                self.chaos_log.append(
                    {"action": action.__name__.lstrip("_"), "what": what, "s": round(time.monotonic() - began, 1)}
                )
                print(f"chaos: {action.__name__.lstrip('_')} {what}", flush=True)

    def _kill_worker(self) -> str:
        worker = self.rng.choice(self.workers)
        worker.kill()
        self.stats["worker_kills"] += 1
        time.sleep(self.rng.uniform(1, 3))
        worker.start()
        return worker.name

    def _term_worker(self) -> str:
        worker = self.rng.choice([w for w in self.workers if w.alive()] or self.workers)
        if not worker.alive():
            worker.start()
            return f"{worker.name} (was down; started)"
        code = worker.terminate(float(WORKER_ENV["DRAIN_TIMEOUT_S"]) + 30)
        self.stats["worker_drains"] += 1
        if code != 0:
            self.stats["drain_failures"] += 1
        worker.start()
        return f"{worker.name} exit={code}"

    def _restart_stub(self) -> str:
        stub = self.rng.choice(self.stubs)  # with replicas: one of them, the other serves meanwhile
        stub.kill()
        self.stats["stub_restarts"] += 1
        time.sleep(self.rng.uniform(1, 3))
        self._start_stub(stub)
        return f"{stub.name}: SIGKILL + restart"

    def _outage(self) -> str:
        seconds = self.rng.uniform(10, 20)
        self.proxy.cut()
        self.stats["outages"] += 1
        time.sleep(seconds)
        self.proxy.restore()
        return f"{seconds:.1f} s"

    # ------------------------------------------------------------ the verdict

    def _check(self, wall_s: float) -> dict[str, Any]:
        views = self._views() or {}
        mine = {job_id: views.get(job_id) for job_id in self.submitted}
        statuses = Counter(v["status"] if v else "missing" for v in mine.values())
        sha_mismatches, missing_files, conflicts = [], [], []
        for job_id, view in mine.items():
            if not view or view["status"] != "completed":
                continue
            result = view["result"]
            path = Path(result["video_url"].removeprefix("file://"))
            if not path.is_file():
                missing_files.append(job_id)
                continue
            data = path.read_bytes()
            if len(data) != result["bytes"] or hashlib.sha256(data).hexdigest() != result["sha256"]:
                sha_mismatches.append(job_id)
            outcomes = {(d["status"], (d.get("result") or {}).get("sha256")) for d in self.hooks.deliveries[job_id]}
            if len(outcomes | {("completed", result["sha256"])}) > 1:
                conflicts.append(job_id)  # completed twice with different results, or completed and failed
        generated = Counter(e.get("job_id") for w in self.workers for e in w.events("job completed"))
        not_final = [j for j, v in mine.items() if not v or v["status"] not in FINAL]
        deliveries = Counter(len(self.hooks.deliveries[j]) for j in self.submitted)
        return {
            "jobs": len(self.submitted),
            "completed": statuses["completed"],
            "failed": statuses["failed"],
            "lost": len(not_final) + len(missing_files),
            "not_final": not_final[:20],
            "missing_files": missing_files[:20],
            "sha_mismatches": len(sha_mismatches),
            "conflicting_results": len(conflicts),
            "failed_codes": dict(Counter(v["error"]["code"] for v in mine.values() if v and v["status"] == "failed")),
            "attempts": dict(sorted(Counter(v["attempts"] for v in mine.values() if v).items())),
            "generated_more_than_once": sum(1 for j in self.submitted if generated[j] > 1),
            "webhook_deliveries_per_job": {str(k): v for k, v in sorted(deliveries.items())},
            "webhook_bad_signatures": self.hooks.bad_signatures,
            "worker_kills": self.stats["worker_kills"],
            "worker_drains": self.stats["worker_drains"],
            "drain_failures": self.stats["drain_failures"],
            "stub_restarts": self.stats["stub_restarts"],
            "outages": self.stats["outages"],
            "submit_retries": self.stats["submit_retries"],
            "chaos": self.chaos_log,
            "job": JOB,
            "seed": self.args.seed,
            "db": self.args.db,
            "stub_replicas": len(self.stubs),
            "wall_s": round(wall_s, 1),
            "workdir": str(self.workdir),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--max-wall-s", type=float, default=600, help="the whole run, checks included")
    parser.add_argument("--submit-s", type=float, default=150, help="submissions are spread over this long")
    parser.add_argument("--settle-s", type=float, default=90, help="chaos stops this long before --max-wall-s")
    parser.add_argument("--gap-s", type=float, nargs=2, default=(8.0, 20.0), help="quiet time between two faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--out", type=Path, help="default: bench/results/soak.json (soak-postgresql.json)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = REPO / "bench" / "results" / ("soak.json" if args.db == "sqlite" else "soak-postgresql.json")
    workdir = Path(tempfile.mkdtemp(prefix="fastwan-soak-"))
    soak = Soak(args, workdir)
    try:
        report = soak.run()
    finally:
        for proc in [*soak.workers, *soak.stubs]:
            proc.kill()
        if soak.pg is not None:
            soak.pg.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for key in (
        "jobs",
        "completed",
        "failed",
        "lost",
        "sha_mismatches",
        "conflicting_results",
        "failed_codes",
        "attempts",
        "generated_more_than_once",
        "webhook_deliveries_per_job",
        "webhook_bad_signatures",
        "worker_kills",
        "worker_drains",
        "drain_failures",
        "stub_restarts",
        "outages",
        "wall_s",
    ):
        print(f"{key:28} {report[key]}")
    ok = (
        report["lost"] == 0
        and report["completed"] + report["failed"] == report["jobs"]
        and not report["sha_mismatches"]
        and not report["conflicting_results"]
        and not report["drain_failures"]
    )
    print("PASS" if ok else "FAIL", f"(logs and videos in {workdir}; figures in {args.out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
