"""Pipelining inside a slot, in-process: the real Slot, JobRunner, outbox and client, a fake GPU child
and a scripted orchestrator (support/fakes.py), with uploads that take time. Milliseconds to a second each;
the same behaviour is shown with real processes in test_slots.py."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from support.fakes import FakeOrchestrator, FakeProcess, FakeSpawn, buffer_settings, fake_slot, job

from worker_app_fastwan.buffer.slot import Slot
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.gpu_child.messages import RunJob
from worker_app_fastwan.job.runner import build_runner
from worker_app_fastwan.job.storage import LocalStorage, StoredObject

pytestmark = pytest.mark.anyio
UPLOAD_S = 0.15


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SlowStorage(LocalStorage):
    """Local storage whose uploads take UPLOAD_S (B2 from a rented box), in the upload thread."""

    def upload(self, local_path: Path, *args: Any) -> StoredObject:
        time.sleep(UPLOAD_S)
        return super().upload(local_path, *args)


class TimedProcess(FakeProcess):
    """Records when each job reached the GPU process and when its video was done."""

    spans: dict[str, tuple[float, float]]

    async def _run(self, job: RunJob) -> None:
        start = time.monotonic()
        try:
            await super()._run(job)
        finally:
            self.spans[job.job_id] = (start, time.monotonic())


class TimedSpawn(FakeSpawn):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.spans: dict[str, tuple[float, float]] = {}
        self.jobs: list[str] = []

    def __call__(self, settings: Settings) -> FakeProcess:
        proc = TimedProcess(settings, **self.options)
        proc.spans, proc.jobs = self.spans, self.jobs  # shared across restarts
        self.processes.append(proc)
        return proc


def slow_worker(settings: Settings, orch: FakeOrchestrator, spawn: FakeSpawn) -> Slot:
    return fake_slot(settings, orch, spawn, storage=SlowStorage(settings.LOCAL_OUTPUT_DIR))


def final_at(orch: FakeOrchestrator, job_id: str) -> float:
    return next(s.at for s in orch.seen if s.path.endswith(f"/{job_id}/status") and s.body["status"] != "running")


async def test_the_next_job_generates_while_the_last_one_uploads_and_both_are_heartbeated(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("j-1"), job("j-2"), job("j-3")])
    spawn = TimedSpawn(steps=15, step_s=0.02)  # generation (0.3 s) outlasts an upload: the GPU never waits
    worker = slow_worker(buffer_settings(tmp_path, HEARTBEAT_INTERVAL_S=0.02), orch, spawn)

    assert await worker.run() == 0

    for earlier, later in (("j-1", "j-2"), ("j-2", "j-3")):
        assert orch.statuses(earlier)[-1]["status"] == "completed"
        assert spawn.spans[later][0] < final_at(orch, earlier), "the next job started before the report"
        idle = spawn.spans[later][0] - spawn.spans[earlier][1]
        assert idle < UPLOAD_S / 2, f"the GPU waited {idle:.3f}s, as if for the upload"
    held = [b.body["job_ids"] for b in orch.beats()]
    assert ["j-1", "j-2"] in held, "a heartbeat names both jobs held (and so renews both leases)"
    assert max(map(len, held)) == 2
    both = next(b.body for b in orch.beats() if b.body["job_ids"] == ["j-1", "j-2"])
    assert both["job_id"] == "j-2" and both["state"] == "busy", "job_id is the generating one"


async def test_uploads_slower_than_generation_hold_the_slot_at_two_jobs(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job(f"j-{n}") for n in range(1, 5)])
    spawn = TimedSpawn(steps=2, step_s=0.01)  # generation far quicker than an upload
    worker = slow_worker(buffer_settings(tmp_path, HEARTBEAT_INTERVAL_S=0.01), orch, spawn)

    assert await worker.run() == 0

    assert max(len(b.body["job_ids"]) for b in orch.beats()) == 2
    for n in (1, 2):  # job n+2 waited until job n was reported: one generating + one finished at most
        assert spawn.spans[f"j-{n + 2}"][0] > final_at(orch, f"j-{n}")
    assert all(orch.statuses(f"j-{n}")[-1]["status"] == "completed" for n in range(1, 5))


async def test_one_at_a_time_when_pipelining_is_off(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("j-1"), job("j-2")])
    spawn = TimedSpawn()
    worker = slow_worker(buffer_settings(tmp_path, BUFFER_PIPELINING=False), orch, spawn)

    assert await worker.run() == 0

    claims = [s.at for s in orch.seen if s.path.endswith("/claim")]
    assert claims[1] > final_at(orch, "j-1"), "the next claim waited for the report"
    assert spawn.spans["j-2"][0] - spawn.spans["j-1"][1] >= UPLOAD_S


async def test_a_failing_report_stops_claims_until_it_went_out_and_nothing_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # j-1's final status gets 503 six times (the orchestrator is down for it), then 200.
    orch = FakeOrchestrator(jobs=[job(f"j-{n}") for n in range(1, 5)], status_codes={"j-1": [200] + [503] * 6})
    worker = fake_slot(buffer_settings(tmp_path), orch, FakeSpawn())
    worker.client.retry = type(worker.client.retry)(initial_s=0.05, max_s=0.05)  # six failed attempts: ~0.3 s

    with caplog.at_level(logging.INFO):
        assert await worker.run() == 0

    finals = [s for s in orch.seen if s.path.endswith("/j-1/status") and s.body["status"] != "running"]
    assert len(finals) == 7, "retried until it went through"
    claims_meanwhile = [s for s in orch.seen if s.path.endswith("/claim") and finals[1].at < s.at < finals[-1].at]
    assert claims_meanwhile == [], "no claim while the report failed"
    assert [r for r in caplog.records if r.message.startswith("claiming paused")]
    for n in range(1, 5):
        assert orch.statuses(f"j-{n}")[-1]["status"] == "completed", n
    assert not list((tmp_path / "state" / "outbox").iterdir())


async def test_stop_with_two_jobs_held_reports_both(tmp_path: Path) -> None:
    settings = buffer_settings(tmp_path, BUFFER_EXIT_WHEN_IDLE=False, DRAIN_TIMEOUT_S=10)
    orch = FakeOrchestrator(jobs=[job("j-1"), job("j-2"), job("j-3")])
    spawn = TimedSpawn(steps=10, step_s=0.02)
    worker = slow_worker(settings, orch, spawn)
    running = asyncio.create_task(worker.run())
    while "j-2" not in spawn.jobs:
        await asyncio.sleep(0.005)
    assert worker.held.ids() == ["j-1", "j-2"]

    worker.stop()
    assert await asyncio.wait_for(running, 10) == 0

    assert [orch.statuses(j)[-1]["status"] for j in ("j-1", "j-2")] == ["completed", "completed"]
    assert orch.statuses("j-3") == [], "nothing claimed after the stop"
    draining = [b.body for b in orch.beats() if b.body["state"] == "draining"]
    assert draining[0]["job_ids"] == ["j-1", "j-2"]


async def test_the_drain_deadline_abandons_an_upload_and_reports_it_retryable(tmp_path: Path) -> None:
    settings = buffer_settings(tmp_path, BUFFER_EXIT_WHEN_IDLE=False, DRAIN_TIMEOUT_S=0.05)
    orch = FakeOrchestrator(jobs=[job("j-1")])
    worker = slow_worker(settings, orch, FakeSpawn())
    running = asyncio.create_task(worker.run())
    while not [p for p in orch.seen if p.path.endswith("/progress") and p.body["stage"] == "uploading"]:
        await asyncio.sleep(0.005)

    worker.stop()
    assert await asyncio.wait_for(running, 10) == 0

    error = orch.statuses("j-1")[-1]["error"]
    assert (error["code"], error["retryable"]) == ("timeout", True)


async def test_a_cancel_while_uploading_reports_the_job_cancelled(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("j-1")])
    worker = slow_worker(buffer_settings(tmp_path, HEARTBEAT_INTERVAL_S=0.02), orch, FakeSpawn())
    running = asyncio.create_task(worker.run())
    while not [p for p in orch.seen if p.path.endswith("/progress") and p.body["stage"] == "uploading"]:
        await asyncio.sleep(0.005)
    orch.cancel_job_ids = ["j-1"]

    assert await asyncio.wait_for(running, 10) == 0

    error = orch.statuses("j-1")[-1]["error"]
    assert (error["code"], error["retryable"]) == ("cancelled", False)


def test_progress_of_an_upload_is_its_own_job_s(tmp_path: Path) -> None:
    """The runner reports `uploading` for the finished job, not for the one generating meanwhile."""
    seen: list[tuple[str, str]] = []
    settings = buffer_settings(tmp_path)
    listeners = [lambda p: seen.append((p.job_id, p.stage.value))]
    runner = build_runner(settings, LocalStorage(settings.LOCAL_OUTPUT_DIR), spawn=FakeSpawn(), listeners=listeners)

    async def both() -> None:
        await runner.start()
        first = await runner.generate("a", job("a")["input"])
        upload = asyncio.ensure_future(runner.finish(first))
        await runner.generate("b", job("b")["input"])
        await upload

    asyncio.run(both())
    assert ("a", "uploading") in seen and ("b", "uploading") not in seen
    assert ("b", "denoising") in seen
