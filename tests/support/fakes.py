"""In-process fakes: a GPU child process that is not a process, and an orchestrator behind httpx.MockTransport.
What is tested above them is real: `GpuChild` (supervision), `JobRunner`, the buffer loop, outbox, heartbeat
and `OrchestratorClient`; only the process and the network are replaced."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from worker_app_fastwan.buffer.outbox import Outbox
from worker_app_fastwan.buffer.slot import Slot
from worker_app_fastwan.core.clock import SYSTEM_CLOCK, Clock
from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.schema import ErrorCode, Stage
from worker_app_fastwan.core.settings import Settings, load_settings
from worker_app_fastwan.gpu_child.messages import (
    ChildExited,
    Done,
    Failed,
    Progress,
    Ready,
    RunJob,
    Shutdown,
)
from worker_app_fastwan.job.runner import build_runner
from worker_app_fastwan.job.storage import LocalStorage
from worker_app_fastwan.orchestrator.client import OrchestratorClient

KEY = "fake-orchestrator-key"
SMALL = {"prompt": "a fox", "width": 256, "height": 256, "num_frames": 9}


class FakeProcess:
    """`gpu_child.process.ChildProcess`'s interface, in this process: it answers the real `GpuChild` handle with
    the real messages. A job takes `steps` denoising steps of `step_s` each, then writes a small file as its
    video. `ignore_cancel` makes a job that only a kill stops; `load_failure` a model that cannot load."""

    def __init__(
        self,
        settings: Settings,
        *,
        steps: int = 3,
        step_s: float = 0.01,
        ignore_cancel: bool = False,
        load_failure: str | None = None,
    ) -> None:
        self.steps, self.step_s = steps, step_s
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.pid = 4242
        self.ignore_cancel = ignore_cancel
        self.load_failure = load_failure
        self.jobs: list[str] = []
        self.killed = 0
        self._cancelled = False
        self._job: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.load_failure:
            failed = Failed(job_id=None, code=ErrorCode.internal, message=self.load_failure, retryable=True, fatal=True)
            self.events.put_nowait(failed)
            self._exit(3)
            return
        device = DeviceInfo(backend="fake", model="fake", name="Fake GPU 1", memory_total_mb=1000)
        self.events.put_nowait(Ready(device=device, load_s=0.0))

    def send(self, msg: object) -> None:
        if self.exited.done():
            raise OSError("the fake child has exited")
        if isinstance(msg, Shutdown):
            self._exit(0)
        elif isinstance(msg, RunJob):
            self.jobs.append(msg.job_id)
            self._job = asyncio.get_running_loop().create_task(self._run(msg))

    async def _run(self, job: RunJob) -> None:
        for step in range(self.steps):
            if self._cancelled and not self.ignore_cancel:
                failed = Failed(
                    job_id=job.job_id, code=ErrorCode.cancelled, message="cancelled at a safe point", retryable=False
                )
                self.events.put_nowait(failed)
                return
            self.events.put_nowait(
                Progress(
                    job_id=job.job_id,
                    stage=Stage.denoising,
                    step=step,
                    total_steps=self.steps,
                    memory_used_mb=300 + step,
                )
            )
            await asyncio.sleep(self.step_s)
        Path(job.out_path).write_bytes(b"not really an mp4: " + job.job_id.encode())
        done = Done(
            job_id=job.job_id,
            seed=job.seed,
            out_path=job.out_path,
            frames=job.input["num_frames"],
            inference_s=0.01,
            encode_tail_s=0.0,
        )
        self.events.put_nowait(done)

    def cancel(self) -> None:
        self._cancelled = True

    def clear_cancel(self) -> None:
        self._cancelled = False

    def kill(self) -> None:
        self.killed += 1
        self._exit(-9)

    def _exit(self, code: int) -> None:
        if self._job is not None:
            self._job.cancel()
        if not self.exited.done():
            self.events.put_nowait(ChildExited(exitcode=code))
            self.exited.set_result(code)


class FakeSpawn:
    """`spawn` for `GpuChild`: makes a `FakeProcess` with these options each time (a restart makes another)."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.processes: list[FakeProcess] = []

    def __call__(self, settings: Settings) -> FakeProcess:
        proc = FakeProcess(settings, **self.options)
        self.processes.append(proc)
        return proc

    @property
    def last(self) -> FakeProcess:
        return self.processes[-1]


@dataclass
class Seen:
    method: str
    path: str
    body: Any
    at: float


@dataclass
class FakeOrchestrator:
    """Answers the worker's calls from scripts; records every request."""

    jobs: list[dict[str, Any]] = field(default_factory=list)  # handed out in order, then 204
    claim_codes: list[int] = field(default_factory=list)  # answered (and consumed) before any job
    empty_claims: int = 0  # 204s answered (and consumed) before the first job
    long_poll: bool = False  # a v1.3 orchestrator: its 204 says it waited (X-Claim-Wait-S), at once here
    claim_note: str | None = None  # the 204's X-Worker-Quarantined
    status_codes: dict[str, list[int]] = field(default_factory=dict)  # per job id, consumed in turn
    cancel_job_ids: list[str] = field(default_factory=list)
    heartbeat_delay_s: float = 0.0
    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.seen.append(Seen(request.method, path, body, time.monotonic()))
        if path.endswith("/claim"):
            if self.claim_codes:
                return httpx.Response(self.claim_codes.pop(0), json={"detail": "scripted"})
            if not self.jobs or self.empty_claims > 0:
                self.empty_claims -= 1
                headers = {"X-Claim-Wait-S": str(body["wait_s"])} if self.long_poll else {}
                if self.claim_note:
                    headers["X-Worker-Quarantined"] = self.claim_note
                return httpx.Response(204, headers=headers)
            return httpx.Response(200, json={"job": self.jobs.pop(0)})
        if path.endswith("/heartbeat"):
            if self.heartbeat_delay_s:
                await asyncio.sleep(self.heartbeat_delay_s)
            return httpx.Response(200, json={"cancel_job_ids": self.cancel_job_ids})
        if path.endswith("/status"):
            script = self.status_codes.get(path.split("/")[-2], [])
            return httpx.Response(script.pop(0) if script else 200, json={})
        return httpx.Response(204)

    def client(self) -> OrchestratorClient:
        transport = httpx.MockTransport(self.handle)
        return OrchestratorClient(
            "http://orchestrator.test", KEY, retry_initial_s=0.001, retry_max_s=0.01, transport=transport
        )

    def statuses(self, job_id: str) -> list[dict[str, Any]]:
        return [s.body for s in self.seen if s.path == f"/internal/buffer/jobs/{job_id}/status"]

    def beats(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("/heartbeat")]


def job(job_id: str, **overrides: Any) -> dict[str, Any]:
    return {"job_id": job_id, "input": {**SMALL, **overrides}, "attempt": 1, "lease_seconds": 30}


def buffer_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "PIPELINE_BACKEND": "tiny",
        "ORCHESTRATOR_BASE_URL": "http://orchestrator.test",
        "INTERNAL_API_KEY": KEY,
        "STATE_DIR": tmp / "state",
        "LOCAL_OUTPUT_DIR": tmp / "videos",
        "HEARTBEAT_INTERVAL_S": 0.05,
        "CLAIM_POLL_S": 0.01,
        "PROGRESS_MIN_INTERVAL_S": 0,
        "BUFFER_EXIT_WHEN_IDLE": True,
        "DRAIN_TIMEOUT_S": 5,
        "OUTBOX_FLUSH_TIMEOUT_S": 1,
    }
    return load_settings(None, **{**values, **overrides})


def fake_slot(
    settings: Settings,
    orchestrator: FakeOrchestrator,
    spawn: FakeSpawn,
    *,
    outbox: Outbox | None = None,
    storage: Any = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Slot:
    """A real slot (runner, lifecycle, outbox, client) over a fake GPU process and a scripted orchestrator."""
    storage = storage or LocalStorage(settings.LOCAL_OUTPUT_DIR)
    make_runner = functools.partial(build_runner, settings, storage, spawn=spawn)  # FakeProcess: ChildProcess's API
    outbox = outbox if outbox is not None else Outbox(settings.STATE_DIR / "outbox")
    return Slot(settings, make_runner, orchestrator.client(), outbox, "w-test", clock=clock)
