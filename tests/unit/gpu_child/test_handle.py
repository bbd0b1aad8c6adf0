"""GPU-process supervision in-process: the real `GpuChild` handle over a fake process (support.fakes.FakeProcess)
that speaks the real messages. The real process is exercised in test_runner.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.fakes import FakeSpawn, buffer_settings
from support.stubs import until

from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.gpu_child.handle import MAX_FAILURES, ChildJobFailure, ChildState, GpuChild
from worker_app_fastwan.gpu_child.messages import Progress, RunJob

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def run_job(tmp_path: Path, job_id: str = "j-1") -> RunJob:
    return RunJob(job_id=job_id, input={"num_frames": 9}, seed=1, out_path=str(tmp_path / f"{job_id}.mp4"))


def ignore(_: Progress) -> None:
    pass


async def started(tmp_path: Path, spawn: FakeSpawn, **settings: object) -> GpuChild:
    child = GpuChild(buffer_settings(tmp_path, **settings), spawn=spawn)  # type: ignore[arg-type]
    await child.start()
    return child


async def test_a_job_runs_with_its_progress_and_the_states_follow(tmp_path: Path) -> None:
    child = await started(tmp_path, FakeSpawn(steps=3))
    assert child.state is ChildState.ready and child.device is not None
    seen: list[tuple[int | None, ChildState]] = []

    done = await child.run(run_job(tmp_path), lambda p: seen.append((p.step, child.state)))

    assert done.job_id == "j-1" and Path(done.out_path).exists()
    assert seen == [(0, ChildState.busy), (1, ChildState.busy), (2, ChildState.busy)]
    assert child.state is ChildState.ready
    await child.stop()
    assert child.state is ChildState.stopped


async def test_a_model_that_cannot_load_is_unhealthy_and_wait_ready_says_so(tmp_path: Path) -> None:
    child = await started(tmp_path, FakeSpawn(load_failure="model load failed: no weights"))

    assert child.state is ChildState.unhealthy and child.unhealthy_reason == "model load failed: no weights"
    assert await asyncio.wait_for(child.wait_ready(), 1) is False


async def test_the_guard_refuses_a_job_while_not_ready(tmp_path: Path) -> None:
    child = await started(tmp_path, FakeSpawn(load_failure="nope"))
    with pytest.raises(RuntimeError, match="no way from unhealthy to busy"):
        await child.run(run_job(tmp_path), ignore)


async def test_an_exit_between_jobs_restarts_the_process_and_wait_ready_wakes(tmp_path: Path) -> None:
    spawn = FakeSpawn()
    child = await started(tmp_path, spawn)
    spawn.last.kill()  # from outside: the handle did not ask for it
    await until(lambda: len(spawn.processes) == 2, timeout_s=2.0, interval_s=0.001)

    assert await asyncio.wait_for(child.wait_ready(), 2) is True
    assert child.failures == 1
    assert (await child.run(run_job(tmp_path), ignore)).job_id == "j-1"
    assert child.failures == 0, "a completed job resets the count of failures in a row"


async def test_max_failures_in_a_row_make_it_unhealthy(tmp_path: Path) -> None:
    """Issue 13: a GPU process that crashes three times in a row takes its slot out."""
    assert MAX_FAILURES == 3
    spawn = FakeSpawn()
    child = await started(tmp_path, spawn)
    for n in range(MAX_FAILURES):
        spawn.last.kill()
        spawned = n + 2
        await until(
            lambda: len(spawn.processes) == spawned or child.state is ChildState.unhealthy,  # noqa: B023 - awaited at once
            timeout_s=2.0,
            interval_s=0.001,
        )
        assert await asyncio.wait_for(child.wait_ready(), 2) is (n < MAX_FAILURES - 1)

    assert len(spawn.processes) == MAX_FAILURES, "two restarts, then no more"
    assert child.state is ChildState.unhealthy
    assert child.unhealthy_reason is not None and f"failed {MAX_FAILURES} times" in child.unhealthy_reason
    assert await child.wait_ready() is False


async def test_a_process_that_dies_during_a_job_fails_it_fatally_and_is_restarted(tmp_path: Path) -> None:
    spawn = FakeSpawn(steps=1000, step_s=0.01)
    child = await started(tmp_path, spawn)
    running = asyncio.create_task(child.run(run_job(tmp_path), ignore))
    await asyncio.sleep(0.05)
    spawn.last._exit(86)

    with pytest.raises(ChildJobFailure) as err:
        await running
    assert err.value.fatal and err.value.code is ErrorCode.generation_failed and "code 86" in err.value.message
    assert await asyncio.wait_for(child.wait_ready(), 2) is True and len(spawn.processes) == 2


async def test_a_job_past_job_timeout_that_ignores_its_cancel_is_killed_and_the_process_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker_app_fastwan.gpu_child.handle.CANCEL_GRACE_S", 0.05)
    spawn = FakeSpawn(steps=10_000, step_s=0.001, ignore_cancel=True)
    child = await started(tmp_path, spawn, JOB_TIMEOUT_S=0.1)

    with pytest.raises(ChildJobFailure) as err:
        await child.run(run_job(tmp_path), ignore)

    assert (err.value.code, err.value.retryable) == (ErrorCode.timeout, True)
    assert "JOB_TIMEOUT_S=0.1s" in err.value.message
    assert spawn.processes[0].killed == 1
    assert await asyncio.wait_for(child.wait_ready(), 2) is True and len(spawn.processes) == 2


async def test_a_job_past_job_timeout_that_stops_at_its_cancel_keeps_the_process(tmp_path: Path) -> None:
    spawn = FakeSpawn(steps=10_000, step_s=0.001)
    child = await started(tmp_path, spawn, JOB_TIMEOUT_S=0.1)

    with pytest.raises(ChildJobFailure) as err:
        await child.run(run_job(tmp_path), ignore)

    assert err.value.code is ErrorCode.timeout
    assert child.state is ChildState.ready and len(spawn.processes) == 1 and spawn.last.killed == 0


async def test_a_cancel_for_a_drain_deadline_fails_the_job_as_a_retryable_timeout(tmp_path: Path) -> None:
    child = await started(tmp_path, FakeSpawn(steps=1000, step_s=0.01))
    running = asyncio.create_task(child.run(run_job(tmp_path), ignore))
    await asyncio.sleep(0.03)
    child.cancel(ErrorCode.timeout)

    with pytest.raises(ChildJobFailure) as err:
        await running
    assert (err.value.code, err.value.retryable, err.value.message) == (
        ErrorCode.timeout,
        True,
        "the job was stopped by the drain deadline",
    )
    assert child.state is ChildState.ready
