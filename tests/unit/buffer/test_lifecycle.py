"""One held job's life after its claim (buffer/lifecycle.py), with a scripted runner, the real outbox and client
over a scripted orchestrator, and a fake clock for the drain deadline. What the slot asks of it: room to claim,
the final status of every path, cancels, bounded deliveries once stopping, the drain deadline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.clock import FakeClock, settle
from support.fakes import FakeOrchestrator
from support.stubs import job_result

from worker_app_fastwan.buffer.held import HeldJob, HeldJobs
from worker_app_fastwan.buffer.lifecycle import JobLifecycle
from worker_app_fastwan.buffer.outbox import Outbox
from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.job_progress import JobProgress
from worker_app_fastwan.core.protocol import ClaimedJob
from worker_app_fastwan.core.schema import ErrorCode, JobInput, JobResult
from worker_app_fastwan.core.stopping import Stopping
from worker_app_fastwan.gpu_child.messages import Done
from worker_app_fastwan.job.result import Generated

pytestmark = pytest.mark.anyio
DRAIN_S = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ScriptedRunner:
    """generate() gives a video (or raises `failure`); finish() uploads until `uploaded` is set."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure, self.uploaded, self.cancelled = failure, asyncio.Event(), []

    async def generate(self, job_id: str, raw_input: Any, *, queued_s: float = 0.0) -> Generated:
        if self.failure is not None:
            raise self.failure
        done = Done(job_id=job_id, seed=1, out_path="/nowhere.mp4", frames=5, inference_s=0.1, encode_tail_s=0.0)
        return Generated(
            job_id, JobInput(prompt="x"), "t2v", Path("/nowhere"), done, 0.0, 0.0, 0.0, JobProgress(job_id)
        )

    async def finish(self, generated: Generated) -> JobResult:
        await self.uploaded.wait()
        return JobResult.model_validate(job_result(generated.job_id))

    def cancel(self, job_id: str, reason: ErrorCode = ErrorCode.cancelled) -> bool:
        self.cancelled.append(job_id)
        return True


class Case:
    def __init__(self, tmp_path: Path, runner: ScriptedRunner | None = None, **orchestrator: Any) -> None:
        self.runner = runner or ScriptedRunner()
        self.orch = FakeOrchestrator(**orchestrator)
        self.held, self.stopping, self.clock = HeldJobs(), Stopping(), FakeClock()
        self.jobs = JobLifecycle(
            self.runner,  # type: ignore[arg-type]  # JobRunner's interface, scripted
            self.orch.client(),
            Outbox(tmp_path / "outbox"),
            "w-1",
            self.held,
            self.stopping,
            flush_grace_s=0.05,
            clock=self.clock,
        )

    async def start(self, job_id: str) -> HeldJob:
        held = self.held.add(ClaimedJob(job_id=job_id, input={"prompt": "x"}))
        await self.jobs.run(held)
        return held

    def final(self, job_id: str) -> dict[str, Any]:
        finals = [s for s in self.orch.statuses(job_id) if s["status"] != "running"]
        assert len(finals) == 1, finals
        return finals[0]


async def test_the_gpus_part_returns_and_the_upload_and_report_go_on_behind(tmp_path: Path) -> None:
    case = Case(tmp_path)
    await case.start("a")
    assert case.jobs.finishing == 1 and case.held.ids() == ["a"], "held while it uploads"
    assert await case.jobs.room(1) is True, "room for the next claim beside one upload"
    room = asyncio.ensure_future(case.jobs.room(0))
    await settle()
    assert not room.done(), "pipelining off: no claim while a job finishes"
    case.runner.uploaded.set()
    await case.jobs.finished()
    assert await room is True
    assert case.final("a")["status"] == "completed" and case.held.ids() == [] and case.jobs.done == 1


async def test_a_failed_generation_is_reported_failed_with_its_code(tmp_path: Path) -> None:
    case = Case(tmp_path, ScriptedRunner(JobFailure(ErrorCode.out_of_memory, "too big", retryable=True)))
    await case.start("a")
    await case.jobs.finished()
    error = case.final("a")["error"]
    assert (error["code"], error["retryable"]) == ("out_of_memory", True)


async def test_an_unexpected_error_is_a_retryable_internal_failure(tmp_path: Path) -> None:
    case = Case(tmp_path, ScriptedRunner(KeyError("bug")))
    await case.start("a")
    await case.jobs.finished()
    error = case.final("a")["error"]
    assert (error["code"], error["retryable"]) == ("internal", True) and "KeyError" in error["message"]


async def test_a_cancel_while_uploading_reports_cancelled(tmp_path: Path) -> None:
    case = Case(tmp_path)
    held = await case.start("a")
    await settle()
    case.jobs.cancel(held)
    await case.jobs.finished()
    assert case.runner.cancelled == ["a"] and case.final("a")["error"]["code"] == "cancelled"


async def test_the_drain_deadline_abandons_the_upload_at_its_time(tmp_path: Path) -> None:
    case = Case(tmp_path)
    await case.start("a")
    case.jobs.start_drain_deadline(DRAIN_S)
    await case.clock.advance(DRAIN_S - 0.001)
    assert case.jobs.finishing == 1, "still uploading just before the deadline"
    await case.clock.advance(0.001)
    await case.jobs.finished()
    error = case.final("a")["error"]
    assert (error["code"], error["retryable"]) == ("timeout", True)


async def test_a_failing_report_stalls_claims_until_it_goes_out(tmp_path: Path) -> None:
    case = Case(tmp_path, status_codes={"a": [200, 503, 503]})  # `running` is accepted; the final fails twice
    case.runner.uploaded.set()
    await case.start("a")
    claim = asyncio.Event()
    got = await case.jobs.unless_stalled(claim.wait())  # type: ignore[arg-type]  # a claim that never answers
    assert got is None and case.held.stalled(), "a claim in flight is dropped once a report stalls"
    await case.jobs.finished()
    assert not case.held.stalled()
    assert [s["status"] for s in case.orch.statuses("a")] == ["running", "completed", "completed", "completed"]


async def test_gone_at_running_drops_the_job_and_reports_nothing_final(tmp_path: Path) -> None:
    case = Case(tmp_path, status_codes={"a": [409]})
    held = await case.start("a")
    await settle()
    case.runner.uploaded.set()
    await case.jobs.finished()
    assert held.dropped and case.runner.cancelled == ["a"]
    assert [s["status"] for s in case.orch.statuses("a")] == ["running"]


async def test_once_stopping_deliveries_get_their_grace_then_stay_in_the_outbox(tmp_path: Path) -> None:
    case = Case(tmp_path)
    case.stopping.set()
    assert await case.jobs.room(1) is False, "no claims once stopping"
    never = asyncio.Event()
    await asyncio.wait_for(case.jobs.deliver(never.wait()), 5)  # cut after flush_grace_s, not hung
