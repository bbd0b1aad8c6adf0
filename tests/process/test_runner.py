"""The job runner with its real GPU child process (tiny backend) and local storage."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.stubs import until
from support.video import read_video

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.job_progress import JobProgress
from worker_app_fastwan.core.schema import ErrorCode
from worker_app_fastwan.core.settings import load_settings
from worker_app_fastwan.gpu_child.handle import ChildState
from worker_app_fastwan.job.runner import Busy, build_runner
from worker_app_fastwan.job.storage import LocalStorage

SMALL = {"width": 128, "height": 128, "num_frames": 9}
# The tiny model's pacing (pipelines/tiny.py): each denoising step lasts a second more, as on a GPU, so a job
# can be cancelled or time out mid-job without keeping the CPU busy.
PACED = "[tiny:pace=1]"


pytestmark = pytest.mark.anyio


TAPS: list[Callable[[JobProgress], object]] = []


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: one event loop for the runner below and every test here


@pytest.fixture(scope="module")
async def runner(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    settings = load_settings(
        None, PIPELINE_BACKEND="tiny", STATE_DIR=root / "state", LOCAL_OUTPUT_DIR=root / "out", JOB_TIMEOUT_S=600
    )
    listeners = [lambda p: [tap(p) for tap in TAPS]]  # the runner's listeners are fixed: the tests tap them
    runner = build_runner(settings, LocalStorage(settings.LOCAL_OUTPUT_DIR), listeners=listeners)
    await runner.start()
    assert runner.state is ChildState.ready
    yield runner
    await runner.close()


async def test_t2v_job_result_matches_the_stored_video(runner):
    seen = []
    TAPS.append(lambda p: seen.append((p.stage.value, p.progress)))
    try:
        result = await runner.run("t2v-1", {"prompt": "a lighthouse at dusk", **SMALL, "seed": 4})
    finally:
        TAPS.clear()
    path = Path(result.video_url.removeprefix("file://"))
    data = path.read_bytes()
    assert result.storage_key == f"videos/t2v-1/{result.sha256}.mp4" and path.name == f"{result.sha256}.mp4"
    assert result.bytes == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
    assert (result.seed, result.mode, result.num_frames) == (4, "t2v", 9)
    frames, _ = read_video(path)
    assert frames.shape == (9, 128, 128, 3)
    assert result.timings.inference_s > 0 and result.timings.total_s >= result.timings.inference_s
    stages = [s for s, _ in seen]
    assert (
        stages.index("encoding_prompt")
        < stages.index("denoising")
        < stages.index("decoding")
        < stages.index("uploading")
    )
    progress = [p for _, p in seen]
    assert progress == sorted(progress) and progress[-1] >= 0.95


async def test_seed_is_picked_and_reported_when_absent(runner):
    a = await runner.run("seedless-1", {"prompt": "waves", **SMALL})
    b = await runner.run("seedless-2", {"prompt": "waves", **SMALL})
    assert 0 <= a.seed < 2**63 and a.seed != b.seed


async def test_invalid_input_names_the_field_and_never_reaches_the_gpu(runner):
    start = time.monotonic()
    with pytest.raises(JobFailure) as err:
        await runner.run("bad-1", {"prompt": "x", "num_frames": 10})
    assert err.value.code is ErrorCode.invalid_input and "num_frames" in err.value.message
    assert not err.value.retryable
    assert time.monotonic() - start < 0.5


async def test_out_of_memory_is_reported_and_the_worker_stays_usable(runner):
    with pytest.raises(JobFailure) as err:
        await runner.run("oom-1", {"prompt": "a cat [tiny:oom]", **SMALL})
    assert err.value.code is ErrorCode.out_of_memory and err.value.retryable
    assert (await runner.run("after-oom", {"prompt": "a cat", **SMALL})).num_frames == 9


async def test_second_job_while_busy_is_refused(runner):
    first = asyncio.create_task(runner.run("long-1", {"prompt": f"a forest {PACED}", **SMALL}))
    await until(lambda: runner.busy, 30, what="the runner busy with the first job")
    with pytest.raises(Busy):
        await runner.run("long-2", {"prompt": "a forest", **SMALL})
    assert (await asyncio.wait_for(first, 120)).job_id == "long-1"


async def test_cancel_stops_within_one_step(runner):
    steps = []
    TAPS.append(lambda p: steps.append((p.stage.value, p.step, time.monotonic())))
    try:
        job = asyncio.create_task(runner.run("cancel-1", {"prompt": f"a storm {PACED}", **SMALL}))
        await until(lambda: any(s == "denoising" and step == 1 for s, step, _ in steps), 60, what="denoising step 1")
        asked = time.monotonic()
        assert runner.cancel("cancel-1")
        with pytest.raises(JobFailure) as err:
            await asyncio.wait_for(job, 60)
    finally:
        TAPS.clear()
    assert err.value.code is ErrorCode.cancelled and not err.value.retryable
    step_times = [t for s, step, t in steps if s == "denoising" and step]
    assert max(step for s, step, _ in steps if s == "denoising") <= 2, "stopped at the next safe point"
    assert time.monotonic() - asked < 2 * (step_times[0] - min(t for s, _, t in steps if s == "denoising")) + 5
    assert runner.state is ChildState.ready


async def test_timeout_ends_a_stuck_job_and_the_worker_recovers(runner):
    runner.settings.JOB_TIMEOUT_S = 3.0
    try:
        with pytest.raises(JobFailure) as err:
            await runner.run("slow-1", {"prompt": "a storm [tiny:pace=3]", **SMALL})  # 9 s
    finally:
        runner.settings.JOB_TIMEOUT_S = 600
    assert err.value.code is ErrorCode.timeout and err.value.retryable
    assert await asyncio.wait_for(runner.wait_ready(), 60), runner.unhealthy_reason
    assert (await runner.run("after-timeout", {"prompt": "calm", **SMALL})).num_frames == 9


async def test_crashed_gpu_process_is_reported_with_its_exit_code_and_restarted(runner):
    old_pid = runner.child.pid
    with pytest.raises(JobFailure) as err:
        await runner.run("crash-1", {"prompt": "a cat [tiny:crash]", **SMALL})
    assert err.value.code is ErrorCode.generation_failed and "exited with code 86" in err.value.message
    assert err.value.retryable
    assert await asyncio.wait_for(runner.wait_ready(), 60), runner.unhealthy_reason
    assert runner.child.pid != old_pid
    assert (await runner.run("after-crash", {"prompt": "a cat", **SMALL})).num_frames == 9


async def test_gpu_process_killed_while_idle_is_restarted_before_the_next_job(runner):
    old_pid = runner.child.pid
    os.kill(old_pid, signal.SIGKILL)
    await until(lambda: runner.state is not ChildState.ready, 10, what="the runner noticing its GPU process died")
    assert runner.state is ChildState.starting
    assert await asyncio.wait_for(runner.wait_ready(), 60), runner.unhealthy_reason
    assert runner.child.pid != old_pid
    assert (await runner.run("after-idle-kill", {"prompt": "a cat", **SMALL})).num_frames == 9
