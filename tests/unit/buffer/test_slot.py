"""The buffer loop in-process: the real Slot, JobRunner, outbox and client, with a fake GPU child
and a scripted orchestrator behind httpx.MockTransport (support/fakes.py). Milliseconds per test."""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path

import pytest
from support.fakes import FakeOrchestrator, FakeSpawn, buffer_settings, fake_slot, job

from worker_app_fastwan.buffer.outbox import Outbox
from worker_app_fastwan.core.protocol import StatusUpdate
from worker_app_fastwan.job.storage import LocalStorage, StoredObject

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_claimed_jobs_are_run_and_reported_through_the_outbox(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("j-1"), job("j-2", seed=7)])
    worker = fake_slot(buffer_settings(tmp_path), orch, FakeSpawn())

    assert await worker.run() == 0

    for job_id in ("j-1", "j-2"):
        running, final = orch.statuses(job_id)
        assert (running["status"], final["status"]) == ("running", "completed")
        assert final["result"]["job_id"] == job_id and final["result"]["bytes"] > 0
    assert orch.statuses("j-2")[1]["result"]["seed"] == 7
    assert not list((tmp_path / "state" / "outbox").iterdir()), "delivered statuses leave the outbox"
    busy = [b.body for b in orch.beats() if b.body["state"] == "busy"]
    assert orch.beats()[0].body["state"] == "starting"
    assert all(b["gpu"]["name"] == "Fake GPU 1" for b in busy) and busy, "the runner tells the loop about the GPU"


class BrokenOnceStorage(LocalStorage):
    """Its first upload fails with an error no code path expects."""

    broken = True

    def upload(self, local_path: Path, job_id: str, sha256: str) -> StoredObject:
        if self.broken:
            self.broken = False
            raise KeyError("a bug, not a JobFailure")
        return super().upload(local_path, job_id, sha256)


async def test_an_unexpected_error_is_a_retryable_internal_failure_and_the_worker_goes_on(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("boom"), job("after")])
    settings = buffer_settings(tmp_path)
    worker = fake_slot(settings, orch, FakeSpawn(), storage=BrokenOnceStorage(settings.LOCAL_OUTPUT_DIR))

    assert await worker.run() == 0

    error = orch.statuses("boom")[-1]["error"]
    assert (error["code"], error["retryable"]) == ("internal", True)
    assert "KeyError" in error["message"]
    assert orch.statuses("after")[-1]["status"] == "completed", "the worker stays alive"


class FullDiskOutbox(Outbox):
    def put(self, job_id: str, update: StatusUpdate) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")


class RefusingOutbox(Outbox):
    def put(self, job_id: str, update: StatusUpdate) -> Path:
        raise ValueError(f"job_id {job_id!r} is not a file name")


@pytest.mark.parametrize("outbox_type", [FullDiskOutbox, RefusingOutbox])
async def test_an_outbox_that_cannot_store_a_status_means_direct_delivery(
    tmp_path: Path, outbox_type: type[Outbox], caplog: pytest.LogCaptureFixture
) -> None:
    settings = buffer_settings(tmp_path)
    orch = FakeOrchestrator(jobs=[job("j-1"), job("j-2")])
    worker = fake_slot(settings, orch, FakeSpawn(), outbox=outbox_type(settings.STATE_DIR / "outbox"))

    with caplog.at_level(logging.INFO):
        assert await worker.run() == 0

    for job_id in ("j-1", "j-2"):  # both delivered: the first failure did not end the worker
        assert [s["status"] for s in orch.statuses(job_id)] == ["running", "completed"]
    assert len([r for r in caplog.records if r.message.startswith("outbox not writable")]) == 2


async def test_a_badly_named_outbox_file_is_set_aside_at_start_up(tmp_path: Path) -> None:
    settings = buffer_settings(tmp_path)
    folder = settings.STATE_DIR / "outbox"
    folder.mkdir(parents=True)
    stored = StatusUpdate(worker_id="w-test", status="completed").model_dump_json()
    (folder / "not a job id!.json").write_text(stored)
    (folder / "j-0.json").write_text(stored)
    orch = FakeOrchestrator(jobs=[job("j-1")])

    assert await fake_slot(settings, orch, FakeSpawn()).run() == 0

    assert [s["status"] for s in orch.statuses("j-0")] == ["completed"], "the good one is still delivered"
    assert orch.statuses("j-1")[-1]["status"] == "completed", "and the worker claims"
    assert sorted(p.name for p in folder.iterdir()) == ["not a job id!.unreadable"], "kept for a person"


async def test_409_on_running_drops_the_job_and_reports_nothing_more(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("taken")], status_codes={"taken": [409]})
    worker = fake_slot(buffer_settings(tmp_path), orch, FakeSpawn(steps=20, step_s=0.02))

    assert await worker.run() == 0

    assert [s["status"] for s in orch.statuses("taken")] == ["running"]
    assert not list((tmp_path / "state" / "outbox").iterdir())


async def test_refused_claims_back_off_exponentially_with_jitter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    poll = 0.01
    orch = FakeOrchestrator(claim_codes=[401, 401, 401, 403], jobs=[job("j-1")])
    worker = fake_slot(buffer_settings(tmp_path, CLAIM_POLL_S=poll, RETRY_MAX_S=10), orch, FakeSpawn())

    with caplog.at_level(logging.ERROR):
        assert await worker.run() == 0

    refusals = [r for r in caplog.records if r.message.startswith("claim refused")]
    assert [r.refusals for r in refusals] == [1, 2, 3, 4]
    assert "HTTP 401" in refusals[0].message and "INTERNAL_API_KEY" in refusals[0].message
    for n, r in enumerate(refusals):
        low = 2 * poll * 2**n
        assert low <= r.retry_in_s <= low + poll + 0.005, (n, r.retry_in_s)
    claims = [s.at for s in orch.seen if s.path.endswith("/claim")]
    assert claims[4] - claims[0] >= 2 * poll * (1 + 2 + 4 + 8), "the back-off was slept, not only logged"
    assert orch.statuses("j-1")[-1]["status"] == "completed"


async def test_the_drain_deadline_stops_the_job_and_reports_it_failed_timeout_retryable(tmp_path: Path) -> None:
    settings = buffer_settings(tmp_path, DRAIN_TIMEOUT_S=0.1, BUFFER_EXIT_WHEN_IDLE=False)
    orch = FakeOrchestrator(jobs=[job("long"), job("never")])
    spawn = FakeSpawn(steps=1000, step_s=0.01)
    worker = fake_slot(settings, orch, spawn)
    running = asyncio.create_task(worker.run())
    while not (spawn.processes and spawn.last.jobs):
        await asyncio.sleep(0.01)

    worker.stop()  # what SIGTERM does
    assert await asyncio.wait_for(running, 10) == 0

    error = orch.statuses("long")[-1]["error"]
    assert (error["code"], error["retryable"]) == ("timeout", True)
    assert orch.statuses("never") == [], "no claim after the signal"
    draining = [b.body for b in orch.beats() if b.body["state"] == "draining"]
    assert draining and draining[0]["job_id"] == "long", "the drain is announced at once, with the job"


async def test_a_job_that_ignores_its_cancel_is_killed_at_the_drain_and_still_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = buffer_settings(tmp_path, DRAIN_TIMEOUT_S=0.05, BUFFER_EXIT_WHEN_IDLE=False)
    orch = FakeOrchestrator(jobs=[job("stuck")])
    spawn = FakeSpawn(steps=10_000, step_s=0.001, ignore_cancel=True)
    worker = fake_slot(settings, orch, spawn)
    running = asyncio.create_task(worker.run())
    while not (spawn.processes and spawn.last.jobs):
        await asyncio.sleep(0.01)

    monkeypatch.setattr("worker_app_fastwan.job.runner.CANCEL_GRACE_S", 0.05)
    worker.stop()
    assert await asyncio.wait_for(running, 10) == 0

    assert spawn.processes[0].killed == 1
    error = orch.statuses("stuck")[-1]["error"]
    assert (error["code"], error["retryable"]) == ("timeout", True)


async def test_a_cancel_in_a_heartbeat_answer_stops_the_job(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("unwanted")], cancel_job_ids=["unwanted", "not-mine"])
    worker = fake_slot(buffer_settings(tmp_path), orch, FakeSpawn(steps=1000, step_s=0.01))

    assert await asyncio.wait_for(worker.run(), 10) == 0

    error = orch.statuses("unwanted")[-1]["error"]
    assert (error["code"], error["retryable"]) == ("cancelled", False)


@pytest.mark.parametrize("secret", ["attempt-secret-from-a-v1.2-orchestrator", None])
async def test_the_claims_attempt_secret_goes_with_every_status_and_beat(tmp_path: Path, secret: str | None) -> None:
    """v1.2: the worker asks for an attempt secret and sends it back with every report about that attempt; from a
    v1.1 orchestrator (no secret in the claim) it sends none, and its reports are v1.1's."""
    claimed = job("j-1") | ({"attempt_secret": secret} if secret else {})
    orch = FakeOrchestrator(jobs=[claimed])
    worker = fake_slot(buffer_settings(tmp_path), orch, FakeSpawn(steps=30, step_s=0.01))

    assert await asyncio.wait_for(worker.run(), 10) == 0

    claims = [s.body for s in orch.seen if s.path.endswith("/claim")]
    assert claims and all(c["wants_attempt_secret"] is True for c in claims)
    statuses = orch.statuses("j-1")
    assert [s["status"] for s in statuses] == ["running", "completed"]
    assert all(s["attempt_secret"] == secret for s in statuses)
    naming = [b.body for b in orch.beats() if "j-1" in b.body["job_ids"]]
    assert naming, "beats while the job was held"
    assert all(b["attempt_secrets"] == ({"j-1": secret} if secret else {}) for b in naming)
