"""The orchestrator stub as a real process on loopback, and scripted HTTP servers, for the tests.

The one way to start stubs is `Stubs(folder).start(*cli_args, **env)` (each with its own database, all killed
at `close()`), taken through one of these fixtures (conftest.py registers this module as a plugin, so tests
take them as arguments without importing them):

- `stub`: a fresh stub with the default settings, for one test;
- `stub_factory(*cli_args, **env)`: stubs with settings of their own, for one test;
- `shared_stub`: one stub with the default settings for a whole test module (a start costs about 2 s): its
  tests must leave it as they found it, apart from the jobs they add;
- `module_stubs(*cli_args, **env)`: stubs with settings of their own for a whole test module.
"""

from __future__ import annotations

import asyncio
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

from support.databases import Databases
from support.http_servers import ThreadedServer, free_port

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-internal-key-5f1c"
WEBHOOK_SECRET = "test-webhook-secret-9a2e"

# Small delays so the whole suite stays fast; each test overrides what it exercises.
FAST_ENV = {
    "LEASE_SECONDS": "30",
    "LEASE_CHECK_S": "0.1",
    "WEBHOOK_BASE_DELAY_S": "0.05",
    "WEBHOOK_MAX_DELAY_S": "0.2",
    "WEBHOOK_SCAN_S": "0.5",
    "DISPATCH_RETRY_BASE_S": "0.05",
    "DISPATCH_RETRY_MAX_S": "0.2",
    "DISPATCH_POLL_S": "0.2",
    # Webhook receivers in tests listen on loopback; tests of the vetting set it back to false.
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    # Off unless a test is about them (test_stub_fleet.py): the others drive one worker id through failures.
    "RETRY_ELSEWHERE_S": "0",
    "QUARANTINE_AFTER_FAILURES": "0",
}


def wait_for(
    check: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.05, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something truthy; returns it, or fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


async def until(
    check: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.01, what: str = "condition"
) -> Any:
    """`wait_for` for async tests: poll `check` without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)
    return value


SHA = "0" * 64


def job_result(job_id: str, sha256: str = SHA) -> dict[str, Any]:
    """A valid protocol result for a completed job: local storage's key and `file://` URL for it."""
    return {
        "job_id": job_id,
        "status": "completed",
        "video_url": f"file:///worker/outputs/videos/{job_id}/{sha256}.mp4",
        "storage_key": f"videos/{job_id}/{sha256}.mp4",
        "width": 1280,
        "height": 704,
        "num_frames": 121,
        "fps": 24,
        "seed": 42,
        "mode": "t2v",
        "bytes": 1234,
        "sha256": sha256,
        "timings": {
            "queue_s": 0.1,
            "download_s": 0.0,
            "inference_s": 1.0,
            "encode_s": 0.2,
            "upload_s": 0.1,
            "total_s": 1.4,
        },
    }


@dataclass
class StubProcess:
    """`python -m orchestrator_stub` on a free loopback port, with HTTP helpers for both APIs.

    `db` is the stub's own file (SQLite) and its folder the stub's working directory; `database` is its STUB_DB
    (the same file, or a PostgreSQL URL: then `db` names no file)."""

    db: Path
    log_path: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    database: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))
    _started_once: bool = False  # a restart keeps its port: workers know it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StubProcess:
        """Start on `port`; on a first start, another free port if that one was taken meanwhile (the kernel
        also hands ports of its ephemeral range to outgoing connections, and tests run side by side)."""
        for _ in range(3):
            if self._start() or self.proc is None or self.proc.returncode is None:
                return self
            if "address already in use" not in self.log_text() or self._started_once:
                break
            self.port = free_port()
        pytest.fail(f"the stub exited with {self.proc.returncode if self.proc else None}:\n{self.log_text()}")

    def _start(self) -> bool:
        """True once the stub answers; False when it exited (the log says why)."""
        self.http.close()  # a fresh connection pool: the old one may hold sockets of a killed process
        self.http = httpx.Client(base_url=self.url, timeout=10)
        env = {
            **os.environ,
            **FAST_ENV,
            "INTERNAL_API_KEY": API_KEY,
            **self.env,
            "STUB_PORT": str(self.port),
            "STUB_DB": self.database or str(self.db),
            "PYTHONPATH": str(REPO),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator_stub", "--env-file", os.devnull, *self.args],
                env=env,
                cwd=self.db.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, timeout_s=20, what=f"the stub on port {self.port} ({self.log_path})")
        if self.proc.returncode is None:
            self._started_once = True
            return True
        return False

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True  # exited: start() reads the log
        try:
            return self.http.get("/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """Send `sig` and wait for the exit; returns the exit status."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        return self.proc.returncode if self.proc else None

    def restart(self) -> StubProcess:
        """SIGKILL (no clean shutdown at all) and start again on the same database and port."""
        self.kill()
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ---- HTTP helpers ---------------------------------------------------------------------------

    def post(self, path: str, body: Any = None, key: str | None = API_KEY, **kwargs: Any) -> httpx.Response:
        headers = {"X-Internal-Api-Key": key} if key is not None else {}
        headers.update(kwargs.pop("headers", {}))
        return self.http.post(path, json=body, headers=headers, **kwargs)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params)

    def submit(self, prompt: str = "a red fox in snow", **fields: Any) -> str:
        response = self.post("/v1/jobs", {"prompt": prompt, **fields}, key=None)
        assert response.status_code == 201, response.text
        return response.json()["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def claim(self, worker_id: str, **fields: Any) -> httpx.Response:
        return self.post("/internal/buffer/jobs/claim", {"worker_id": worker_id, "gpu_class": "test-gpu", **fields})

    def claim_job(self, worker_id: str) -> dict[str, Any]:
        response = self.claim(worker_id)
        assert response.status_code == 200, response.text
        return response.json()["job"]

    def heartbeat(self, worker_id: str, job_id: str | None = None, state: str = "busy") -> httpx.Response:
        body = {
            "gpu_class": "test-gpu",
            "state": state,
            "job_id": job_id,
            "progress": 0.5,
            "gpu": {"name": "Test GPU", "memory_used_mb": 1000, "memory_total_mb": 24000},
        }
        return self.post(f"/internal/buffer/workers/{worker_id}/heartbeat", body)

    def status(self, job_id: str, worker_id: str, status: str, **fields: Any) -> httpx.Response:
        if status == "completed":
            fields.setdefault("result", job_result(job_id))
        return self.post(f"/internal/buffer/jobs/{job_id}/status", {"worker_id": worker_id, "status": status, **fields})


@dataclass
class Stubs:
    """Stubs started by one test or module, each with its own database (of `databases`' backend) unless told
    to share one; all are killed (and their logs printed, which pytest shows when the test fails) at `close()`."""

    folder: Path
    databases: Databases | None = None
    started: list[StubProcess] = field(default_factory=list)

    def start(self, *args: str, database: str | None = None, **env: Any) -> StubProcess:
        """`python -m orchestrator_stub *args` with `env`, on a free loopback port; `database`: another stub's
        STUB_DB (a replica of it), else a fresh one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len(self.started)
        file = self.folder / f"stub{n}.sqlite3"
        if database is None and self.databases is not None and self.databases.backend != "sqlite":
            database = self.databases.fresh()
        stub = StubProcess(
            db=Path(database) if database and not database.startswith("postgres") else file,
            log_path=self.folder / f"stub{n}.log",
            env={k: str(v) for k, v in env.items()},
            args=list(args),
            database=database or str(file),
        )
        self.started.append(stub)
        return stub.start()

    def close(self) -> None:
        for stub in self.started:
            stub.kill()  # SIGKILL: fast, and the stub is built to survive it
            stub.http.close()
            print(f"---- {stub.log_path} ----\n{stub.log_text()[-20000:]}")


@pytest.fixture
def stub_factory(tmp_path: Path, databases: Databases) -> Iterator[Callable[..., StubProcess]]:
    """`stub_factory(*cli_args, **env)` starts a stub with its own database (`database=other.database`: on
    another's, a replica); all are killed at teardown."""
    stubs = Stubs(tmp_path, databases)
    yield stubs.start
    stubs.close()


@pytest.fixture
def stub(stub_factory: Callable[..., StubProcess]) -> StubProcess:
    return stub_factory()


@pytest.fixture(scope="module")
def module_stubs(
    tmp_path_factory: pytest.TempPathFactory, stub_backend: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., StubProcess]]:
    """`module_stubs(*cli_args, **env)` starts a stub that lives as long as the test module."""
    folder = tmp_path_factory.mktemp("stubs")
    stubs = Stubs(folder, Databases(stub_backend, folder / "db", request))
    yield stubs.start
    stubs.close()


@pytest.fixture(scope="module")
def shared_stub(module_stubs: Callable[..., StubProcess]) -> StubProcess:
    return module_stubs()


# ---- scripted loopback HTTP server (webhook receiver, stand-in queue-mode worker) -------------------


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # JSON, or a callable(Recorded) returning it
    delay_s: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    raw: bytes = b""


class ScriptedServer(ThreadedServer):
    """Answers POSTs with `answers` in order (the last one repeats) and records every request."""

    def __init__(self, answers: list[Answer], on_request: Callable[[Recorded], None] | None = None) -> None:
        self.answers = list(answers)
        self.requests: list[Recorded] = []
        self.on_request = on_request
        self.closing = threading.Event()
        self._lock = threading.Lock()
        super().__init__()

    def _next(self, recorded: Recorded) -> Answer:
        with self._lock:
            self.requests.append(recorded)
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorded = Recorded(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw) if raw else None,
                    time.monotonic(),
                    raw,
                )
                answer = server._next(recorded)
                if server.on_request:
                    server.on_request(recorded)
                server.closing.wait(answer.delay_s)
                body = answer.body(recorded) if callable(answer.body) else answer.body
                data = json.dumps(body).encode() if body is not None else b""
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (a cancelled dispatch): nothing to answer
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        super().__exit__(*exc)


@pytest.fixture
def scripted_server() -> Iterator[Callable[..., ScriptedServer]]:
    """`scripted_server([Answer(500), Answer(200, {...})])` starts one; all are closed at teardown."""
    servers: list[ScriptedServer] = []

    def start(answers: list[Answer], on_request: Callable[[Recorded], None] | None = None) -> ScriptedServer:
        server = ScriptedServer(answers, on_request).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)
