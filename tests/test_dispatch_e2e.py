"""The stub's Salad-style dispatcher driving a real queue-mode worker end to end (Salad's rules)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_procs import WorkerProcess, wait_final, wait_health
from helpers_video import read_video
from stub_fixtures import Stubs, free_port

SMALL = {"width": 256, "height": 256, "num_frames": 9}


@pytest.fixture(scope="module")
def dispatched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dispatch")
    port = free_port()
    worker = WorkerProcess.queue(tmp / "worker", port, ALLOW_PRIVATE_IMAGE_URLS="false").start()
    wait_health(f"http://127.0.0.1:{port}", ("ready",))
    stubs = Stubs(tmp / "stub")
    stub = stubs.start(
        "--dispatch-to",
        f"http://127.0.0.1:{port}/generate",
        DISPATCH_RETRY_BASE_S=0.1,
        DISPATCH_RETRY_MAX_S=0.2,
    )
    yield stub, worker
    stubs.close()
    worker.stop()


def test_a_job_is_generated_and_its_result_stored(dispatched):
    stub, _ = dispatched
    view = wait_final(stub, stub.submit("a kite over the sea", seed=5, **SMALL))
    assert view["status"] == "completed", view
    assert len(view["dispatch_attempts"]) == 1
    result = view["result"]
    assert result["job_id"] == view["job_id"] and result["seed"] == 5
    frames, _ = read_video(Path(result["video_url"].removeprefix("file://")))
    assert frames.shape == (9, 256, 256, 3)


def test_a_422_from_the_worker_is_final_after_one_attempt(dispatched):
    stub, _ = dispatched
    job_id = stub.submit("private image", image_url=f"http://127.0.0.1:{free_port()}/x.png", **SMALL)
    view = wait_final(stub, job_id)
    assert view["status"] == "failed" and view["error"]["code"] == "invalid_input"
    assert "image_url" in view["error"]["message"]
    assert len(view["dispatch_attempts"]) == 1


def test_a_5xx_from_the_worker_is_retried_then_failed(dispatched):
    stub, _ = dispatched
    view = wait_final(stub, stub.submit("simulated [tiny:oom]", **SMALL))
    assert view["status"] == "failed" and view["error"]["code"] == "out_of_memory"
    assert len(view["dispatch_attempts"]) == 4, view["dispatch_attempts"]
    after = wait_final(stub, stub.submit("the worker is still usable", **SMALL))
    assert after["status"] == "completed"
