"""Real processes on loopback for end-to-end tests: worker subprocesses (either mode), the orchestrator stub,
a recording proxy between them, and a small image server.

    def test_x(stub_factory, workers: WorkerSet, tmp_path: Path) -> None:   # fixtures (support.stubs, here)
        stub = stub_factory(LEASE_SECONDS=4)         # python -m orchestrator_stub (support.stubs.StubProcess)
        worker = workers.add(WorkerProcess.buffer(tmp_path / "w", stub.url))
        worker.wait_for_event("claiming jobs")
        ...
        assert worker.stop() == 0                    # SIGTERM, wait, exit code

Workers run with the tiny backend and local storage, in their own folder (so no `.env` of the checkout is
read); every setting can be overridden. Logs are JSON lines in a file, parsed by `events()`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.http_servers import ThreadedServer
from support.stubs import API_KEY, REPO, StubProcess, wait_for

# Settings every test worker shares: the tiny CPU model, local storage, fast retries and polls.
WORKER_ENV = {
    "PIPELINE_BACKEND": "tiny",
    "STORAGE_BACKEND": "local",
    "INTERNAL_API_KEY": API_KEY,
    "CLAIM_POLL_S": "0.2",
    "HEARTBEAT_INTERVAL_S": "1",
    "PROGRESS_MIN_INTERVAL_S": "0",
    "RETRY_MAX_S": "1",
    "OUTBOX_FLUSH_TIMEOUT_S": "5",
    "LOG_LEVEL": "INFO",
}
WORKER_START_S = 90  # torch + diffusers import and the tiny model's warm-up, on 2 busy cores


@dataclass
class WorkerProcess:
    """`python -m worker_app_fastwan <command>` in `folder`, logging JSON lines to `folder/<name>.log`."""

    folder: Path
    env: dict[str, str]
    command: str = "buffer"
    name: str = "worker"
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def buffer(cls, folder: Path, orchestrator_url: str, name: str = "worker", **env: Any) -> WorkerProcess:
        """A buffer-mode worker; its STATE_DIR (outbox, worker id) and videos live under `folder`."""
        base = {
            "ORCHESTRATOR_BASE_URL": orchestrator_url,
            "STATE_DIR": str(folder / "state"),
            "LOCAL_OUTPUT_DIR": str(folder / "videos"),
        }
        return cls(folder, {**WORKER_ENV, **base, **{k: str(v) for k, v in env.items()}}, "buffer", name)

    @classmethod
    def queue(cls, folder: Path, port: int, name: str = "worker", **env: Any) -> WorkerProcess:
        """A queue-mode worker (`serve`) on 127.0.0.1:`port`."""
        base = {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "STATE_DIR": str(folder / "state"),
            "LOCAL_OUTPUT_DIR": str(folder / "videos"),
        }
        return cls(folder, {**WORKER_ENV, **base, **{k: str(v) for k, v in env.items()}}, "serve", name)

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def state_dir(self) -> Path:
        return Path(self.env["STATE_DIR"])

    @property
    def outbox(self) -> Path:
        return self.state_dir / "outbox"

    def environment(self) -> dict[str, str]:
        """What the process starts with: this process's environment, the worker's own settings over it."""
        return {**os.environ, **self.env, "PYTHONPATH": str(REPO)}

    def start(self) -> WorkerProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = self.environment()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker_app_fastwan", self.command],
                env=env,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() first"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None, "start() first"
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60) -> int:
        """The exit status once the process ended; fails the test if it has not within `timeout_s`."""
        assert self.proc is not None, "start() first"
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running after {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (a graceful drain) and the exit status."""
        if self.alive():
            self.signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL, nothing runs on the way out (the GPU child dies with its parent)."""
        if self.alive():
            self.signal(signal.SIGKILL)
            self.wait(10)

    # ---- logs -----------------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def events(self, event: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """The JSON log lines (whose `event` starts with `event`, and whose fields match `fields`)."""
        found = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue  # a library writing to stderr directly
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if event is not None and not str(record.get("event", "")).startswith(event):
                continue
            if all(record.get(k) == v for k, v in fields.items()):
                found.append(record)
        return found

    def wait_for_event(self, event: str, timeout_s: float = WORKER_START_S, **fields: Any) -> dict[str, Any]:
        """The first log line matching; fails the test (with the log) if the worker exits or time runs out."""

        def check() -> dict[str, Any] | None:
            if not self.alive() and not self.events(event, **fields):
                pytest.fail(
                    f"{self.name} exited ({self.proc.returncode if self.proc else None}) "
                    f"before logging {event!r}:\n{self.log_tail()}"
                )
            found = self.events(event, **fields)
            return found[0] if found else None

        return wait_for(check, timeout_s, interval_s=0.1, what=f"{self.name} to log {event!r}")


@dataclass
class WorkerSet:
    """Workers started by one test or module; all are killed (and their logs printed) at teardown."""

    started: list[WorkerProcess] = field(default_factory=list)

    def add(self, worker: WorkerProcess) -> WorkerProcess:
        self.started.append(worker)
        return worker.start()

    def close(self) -> None:
        for worker in self.started:
            worker.kill()
            print(f"---- {worker.log_path} ----\n{worker.log_tail(20000)}")


@pytest.fixture
def workers() -> Iterator[WorkerSet]:
    """`workers.add(WorkerProcess.buffer(...))` starts one; all are killed at teardown."""
    started = WorkerSet()
    yield started
    started.close()


def wait_job(
    stub: StubProcess,
    job_id: str,
    check: Callable[[dict[str, Any]], bool],
    timeout_s: float = 60,
    what: str = "job state",
) -> dict[str, Any]:
    """The stub's view of the job once `check(view)` holds."""

    def probe() -> dict[str, Any] | None:
        view = stub.job(job_id)
        return view if check(view) else None

    return wait_for(probe, timeout_s, interval_s=0.1, what=f"{job_id}: {what}")


def wait_final(stub: StubProcess, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    return wait_job(stub, job_id, lambda v: v["status"] in ("completed", "failed"), timeout_s, "a final status")


# ---- a recording reverse proxy (what a worker sent, and when) ------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    body: Any
    status: int
    at: float  # time.monotonic() when the request arrived


class RecordingProxy(ThreadedServer):
    """Forwards every request to `target` unchanged and records it, with its arrival time.

    A plain thread per request (ThreadingHTTPServer): the proxy adds no queueing of its own, so arrival
    times are what the worker's schedule produced.
    """

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        # A new connection per request: a kept-alive one can be closed by the stub (uvicorn: 5 s idle) just as
        # it is reused, and the proxy would answer 502 for a request the worker sent correctly.
        self._http = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
        super().__init__()

    def requests(self, path_part: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if path_part in s.path]

    def _forward(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, str]:
        keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
        try:
            response = self._http.request(method, self.target + path, headers=keep, content=raw)
        except (httpx.HTTPError, RuntimeError):  # RuntimeError: closed at teardown with a request in flight
            return 502, b"", "application/json"
        return response.status_code, response.content, response.headers.get("content-type", "application/json")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                at = time.monotonic()
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, body, ctype = proxy._forward(self.command, self.path, dict(self.headers.items()), raw)
                with proxy._lock:
                    proxy.seen.append(Seen(self.command, self.path, json.loads(raw) if raw else None, status, at))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any  # noqa: N815 (http.server's naming)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._http.close()


# ---- an image server for image-to-video jobs --------------------------------------------------------


class FileServer(ThreadedServer):
    """Serves fixed bytes at fixed paths on loopback (an i2v input image)."""

    def __init__(self, files: dict[str, tuple[bytes, str]]) -> None:
        self.files = files
        super().__init__()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                found = files.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                data, ctype = found
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def wait_health(base: str, states: tuple[str, ...], timeout_s: float = WORKER_START_S) -> dict[str, Any]:
    """A queue-mode worker's /health body once its status is one of `states`."""

    def probe() -> dict[str, Any] | None:
        try:
            body = http.get(f"{base}/health").json()
        except httpx.TransportError:
            return None
        return body if body["status"] in states else None

    # One client for the whole wait: `httpx.get` builds a new SSL context each call (~30 ms of CPU), which at
    # this rate would take a core away from the worker being waited for.
    with httpx.Client(timeout=2) as http:
        return wait_for(probe, timeout_s, interval_s=0.02, what=f"/health to say {states}")


def assert_torch_only_in_the_gpu_child(pid: int) -> None:
    """The parent never imports torch (it stays small and never fights generation for the GIL); its GPU
    child does, which shows the check can see torch where it is loaded."""

    def has_torch(p: int) -> bool:
        return "libtorch" in Path(f"/proc/{p}/maps").read_text()

    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert any(has_torch(c) for c in children), "the GPU child has torch loaded"
    assert not has_torch(pid), "the parent process imported torch"
