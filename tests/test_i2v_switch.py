"""`I2V_ENABLED=false`: image-to-video (experimental) switched off, seen from outside the worker process.

Buffer mode advertises `modes: ["t2v"]` in its claims (so the orchestrator keeps image jobs for others);
queue mode refuses a job with an image with `invalid_input` before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from helpers_http import free_port
from helpers_procs import RecordingProxy, WorkerProcess, WorkerSet, wait_final, wait_health
from stub_fixtures import StubProcess

SMALL = {"width": 256, "height": 256, "num_frames": 9}


def test_buffer_worker_with_i2v_off_claims_t2v_only(
    stub_factory: Callable[..., StubProcess], workers: WorkerSet, tmp_path: Path
) -> None:
    stub = stub_factory()
    with RecordingProxy(stub.url) as proxy:
        worker = workers.add(WorkerProcess.buffer(tmp_path / "w", proxy.url, I2V_ENABLED="false"))
        image_job = stub.submit("the picture comes alive", image_url="http://127.0.0.1:9/cat.png", **SMALL)
        text_job = stub.submit("a red fox in snow", seed=3, **SMALL)
        assert wait_final(stub, text_job, 120)["status"] == "completed"
        claims = [seen.body for seen in proxy.requests("/claim")]
    assert claims and all(c["capabilities"]["modes"] == ["t2v"] for c in claims), claims
    view = stub.job(image_job)
    assert view["status"] == "queued" and view["attempts"] == 0, "the image job was never handed to this worker"
    assert worker.alive


def test_queue_worker_with_i2v_off_refuses_an_image_job(workers: WorkerSet, tmp_path: Path) -> None:
    port = free_port()
    workers.add(WorkerProcess.queue(tmp_path / "q", port, I2V_ENABLED="false"))
    base = f"http://127.0.0.1:{port}"
    wait_health(base, ("ready",))
    body = {"prompt": "the picture comes alive", "image_url": "http://127.0.0.1:9/cat.png", **SMALL}
    resp = httpx.post(f"{base}/generate", json=body, timeout=60)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_input" and error["retryable"] is False
    assert error["message"].startswith("image_url:") and "I2V_ENABLED" in error["message"]
    done = httpx.post(f"{base}/generate", json={"prompt": "a red fox", **SMALL}, timeout=120)
    assert done.status_code == 200 and done.json()["mode"] == "t2v"
