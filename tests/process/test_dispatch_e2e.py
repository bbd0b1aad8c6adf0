"""The stub's Salad-style dispatcher driving a real queue-mode worker end to end (Salad's rules).

The worker runs with image-to-video switched off (`I2V_ENABLED=false`): it refuses an image job with
`invalid_input` before any work, which is the final 4xx the dispatcher must not retry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.procs import WorkerProcess, wait_final, wait_health
from support.stubs import free_port
from support.video import read_video

SMALL = {"width": 128, "height": 128, "num_frames": 9}


@pytest.fixture(scope="module")
def dispatched(tmp_path_factory, module_stubs):
    tmp = tmp_path_factory.mktemp("dispatch")
    port = free_port()
    worker = WorkerProcess.queue(tmp / "worker", port, I2V_ENABLED="false").start()
    wait_health(f"http://127.0.0.1:{port}", ("ready",))
    stub = module_stubs(
        "--dispatch-to",
        f"http://127.0.0.1:{port}/generate",
        DISPATCH_RETRY_BASE_S=0.1,
        DISPATCH_RETRY_MAX_S=0.2,
    )
    yield stub, worker
    worker.stop()


def test_a_job_is_generated_and_its_result_stored(dispatched):
    stub, _ = dispatched
    view = wait_final(stub, stub.submit("a kite over the sea", seed=5, **SMALL))
    assert view["status"] == "completed", view
    assert len(view["dispatch_attempts"]) == 1
    result = view["result"]
    assert result["job_id"] == view["job_id"] and result["seed"] == 5
    frames, _ = read_video(Path(result["video_url"].removeprefix("file://")))
    assert frames.shape == (9, 128, 128, 3)


def test_a_422_from_the_worker_is_final_after_one_attempt(dispatched):
    stub, _ = dispatched
    job_id = stub.submit("the picture comes alive", image_url=f"http://127.0.0.1:{free_port()}/x.png", **SMALL)
    view = wait_final(stub, job_id)
    assert view["status"] == "failed" and view["error"]["code"] == "invalid_input"
    assert view["error"]["message"].startswith("image_url:") and "I2V_ENABLED" in view["error"]["message"]
    assert view["error"]["retryable"] is False
    assert [a["status_code"] for a in view["dispatch_attempts"]] == [422]


def test_a_5xx_from_the_worker_is_retried_then_failed(dispatched):
    stub, _ = dispatched
    view = wait_final(stub, stub.submit("simulated [tiny:oom]", **SMALL))
    assert view["status"] == "failed" and view["error"]["code"] == "out_of_memory"
    assert len(view["dispatch_attempts"]) == 4, view["dispatch_attempts"]
    after = wait_final(stub, stub.submit("the worker is still usable", **SMALL))
    assert after["status"] == "completed"
