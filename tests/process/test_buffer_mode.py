"""Buffer mode end to end: `python -m worker_app_fastwan buffer` processes (tiny model, local storage) against
a real `python -m orchestrator_stub` process on loopback.

Each worker takes ~7 s to start (torch + diffusers in its GPU child), so one worker serves several
assertions where that stays honest. Job sizes are picked for the tiny model on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support.procs import (
    FileServer,
    RecordingProxy,
    WorkerProcess,
    WorkerSet,
    assert_torch_only_in_the_gpu_child,
    wait_final,
    wait_job,
)
from support.semantic import assert_shows_prompt, assert_starts_from_image_and_moves, world_image
from support.stubs import StubProcess, wait_for
from support.video import png_bytes, read_video

SMALL = {"width": 128, "height": 128, "num_frames": 9, "num_inference_steps": 3}
# The miniature model's world at the size it was trained at (docs/miniature.md): what the video shows is judged.
WORLD = {"width": 128, "height": 128, "num_frames": 17, "num_inference_steps": 3}
# The tiny model's pacing (pipelines/tiny.py): each denoising step lasts 2 s more, as on a GPU, so the test
# can act while the job runs (cancel, drain, kill, an outage) without the CPU being busy all that time.
PACED = "[tiny:pace=2]"
BRIEFLY_PACED = "[tiny:pace=1]"  # where nothing has to land between two steps: the job only has to be running
# Keeps the GPU child's CPU really busy for several seconds (about 10 s of VAE decoding here; the test worker is held to
# one thread so that a bigger machine does not make it short): the heartbeat must not suffer from it.
CPU_HEAVY = {"width": 416, "height": 416, "num_frames": 25, "num_inference_steps": 3}


def video_path(result: dict[str, Any]) -> Path:
    return Path(result["video_url"].removeprefix("file://"))


def queue_worker(stub: StubProcess, worker_id: str) -> dict[str, Any]:
    return next(w for w in stub.get("/v1/queue").json()["workers"] if w["worker_id"] == worker_id)


# ---- one stub and one worker for the everyday path ------------------------------------------------------


@dataclass
class Shared:
    stub: StubProcess
    worker: WorkerProcess
    proxy: RecordingProxy  # between the worker and the stub: what the worker sent, and when


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, shared_stub: StubProcess) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp("shared")
    stub, workers = shared_stub, WorkerSet()
    with RecordingProxy(stub.url) as proxy:
        worker = workers.add(
            WorkerProcess.buffer(
                root / "worker",
                proxy.url,
                BUFFER_WORKER_ID="shared-worker",
                ALLOW_PRIVATE_IMAGE_URLS="true",
                HEARTBEAT_INTERVAL_S="0.5",
                DRAIN_TIMEOUT_S="2",
            )
        )
        try:
            worker.wait_for_event("claiming jobs")
            yield Shared(stub, worker, proxy)
        finally:
            workers.close()


def test_t2v_and_i2v_jobs_are_claimed_run_and_reported(shared: Shared) -> None:
    """...and the MP4s in storage show what was asked: the prompt's object and motion (text-to-video, a prompt
    and seed the shipped miniature gets right), the input image moving as asked (image-to-video)."""
    stub, worker = shared.stub, shared.worker
    image = world_image("a green square moving down", seed=4)
    with FileServer({"/start.png": (png_bytes(Image.fromarray(image)), "image/png")}) as images:
        # Paced a little, so that heartbeats (every 0.5 s here) come while each job is held, however fast the CPU.
        t2v = stub.submit("a blue circle moving right [tiny:pace=0.5]", seed=11, **WORLD)
        i2v = stub.submit(
            "a green square moving down [tiny:pace=0.5]", image_url=f"{images.url}/start.png", seed=12, **WORLD
        )
        views = {job_id: wait_final(stub, job_id, 60) for job_id in (t2v, i2v)}
    assert_shows_prompt(video_path(views[t2v]["result"]), "a blue circle moving right")
    assert_starts_from_image_and_moves(video_path(views[i2v]["result"]), image, "a green square moving down")

    stage_order = ["queued", "downloading", "encoding_prompt", "denoising", "decoding", "encoding_video", "uploading"]
    for job_id, mode, seed in ((t2v, "t2v", 11), (i2v, "i2v", 12)):
        view = views[job_id]
        assert (view["status"], view["attempts"], view["worker_id"]) == ("completed", 1, "shared-worker"), view
        result = view["result"]
        assert (result["job_id"], result["mode"], result["num_frames"], result["seed"]) == (job_id, mode, 17, seed)
        assert result["storage_key"] == f"videos/{job_id}/{result['sha256']}.mp4"
        data = video_path(result).read_bytes()
        assert result["bytes"] == len(data) and result["sha256"] == hashlib.sha256(data).hexdigest()
        frames, _ = read_video(video_path(result))
        assert frames.shape == (17, 128, 128, 3)
        progress = shared.proxy.requests(f"/internal/videogen/jobs/{job_id}/progress")
        assert progress and all(p.status == 204 for p in progress)
        stages = [stage_order.index(p.body["stage"]) for p in progress]
        assert stages == sorted(stages) and stage_order[stages[-1]] == "uploading", stages
        assert [p.body["progress"] for p in progress] == sorted(p.body["progress"] for p in progress)
        statuses = [s.body for s in shared.proxy.requests(f"/internal/buffer/jobs/{job_id}/status")]
        assert [(b["status"], b["attempt"]) for b in statuses] == [("running", 1), ("completed", 1)]  # v1.1
        busy_beats = [b.body for b in shared.proxy.requests("/heartbeat") if b.body["job_id"] == job_id]
        # v1.1: every job held; pipelined, the job generating and the one before it, still uploading or reporting
        assert busy_beats and all(job_id in b["job_ids"] and len(b["job_ids"]) <= 2 for b in busy_beats)
    assert [p.body["stage"] for p in shared.proxy.requests(f"/jobs/{i2v}/progress")].count("downloading") == 1
    assert worker.events("job claimed", job_id=i2v, attempt=1)
    assert worker.events("final status delivered", job_id=t2v, outcome="ok")
    me = wait_for(lambda: (w := queue_worker(stub, "shared-worker"))["state"] == "idle" and w, 5, what="idle")
    assert (me["gpu_class"], me["gpu"]["name"], me["job_id"]) == ("cpu", "cpu", None)
    # The proxy records a heartbeat once the stub has answered it: a moment after the stub shows the worker idle.
    wait_for(lambda: shared.proxy.requests("/heartbeat")[-1].body["job_ids"] == [], 5, what="an idle heartbeat")
    assert not list(worker.outbox.iterdir()), "delivered statuses leave the outbox"
    assert_torch_only_in_the_gpu_child(worker.pid)


def test_cancelled_job_stops_within_one_step(shared: Shared) -> None:
    stub, worker = shared.stub, shared.worker
    job_id = stub.submit(f"cancel me {PACED}", seed=3, **SMALL)
    wait_job(stub, job_id, lambda v: v["stage"] == "denoising" and (v["step"] or 0) >= 1, 60, "denoising step 1")

    assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 202
    view = wait_final(stub, job_id, 60)

    assert view["status"] == "failed"
    assert (view["error"]["code"], view["error"]["retryable"]) == ("cancelled", False)
    cancelled_at = worker.wait_for_event("cancelling job", 5, job_id=job_id)["step"]
    total = SMALL["num_inference_steps"]
    assert view["stage"] == "denoising" and view["total_steps"] == total
    assert cancelled_at <= view["step"] <= cancelled_at + 1 < total, (cancelled_at, view["step"])
    # The worker goes on: the next job runs normally.
    after = stub.submit("after the cancel", **SMALL)
    assert wait_final(stub, after, 60)["status"] == "completed"


def test_drain_deadline_stops_the_job_and_reports_it_failed_retryable(shared: Shared) -> None:
    """The last test of the shared worker: it ends it (DRAIN_TIMEOUT_S=2)."""
    stub, worker = shared.stub, shared.worker
    job_id = stub.submit(f"too long for the drain {PACED}", **SMALL)
    wait_job(stub, job_id, lambda v: v["stage"] == "denoising", 60, "denoising")

    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    view = stub.job(job_id)
    # Reported failed/timeout/retryable, so the orchestrator puts it back in the queue for another worker.
    assert (view["status"], view["attempts"], view["worker_id"]) == ("queued", 1, None), "retryable: requeued"
    assert (view["last_error"]["code"], view["last_error"]["retryable"]) == ("timeout", True), view["last_error"]
    assert worker.events("drain deadline reached", job_id=job_id)
    beats = [b.body for b in shared.proxy.requests("/heartbeat") if b.body["state"] == "draining"]
    assert beats and beats[0]["job_id"] == job_id
    assert not list(worker.outbox.iterdir())


# ---- failures around the worker ----------------------------------------------------------------------------


def test_killed_worker_job_is_requeued_and_done_by_another(
    tmp_path: Path, stub_factory: Callable[..., StubProcess], workers: WorkerSet
) -> None:
    stub = stub_factory(LEASE_SECONDS=4)
    # Two workers load side by side; whichever claims the job is killed while it runs it.
    pair = {
        f"worker-{n}": workers.add(WorkerProcess.buffer(tmp_path / n, stub.url, name=n, BUFFER_WORKER_ID=f"worker-{n}"))
        for n in "ab"
    }
    for worker in pair.values():
        worker.wait_for_event("claiming jobs")
    job_id = stub.submit(f"interrupted {BRIEFLY_PACED}", **SMALL)
    running = wait_job(stub, job_id, lambda v: v["status"] == "running", 60, "a worker running it")
    killed_id = running["worker_id"]
    (other_id,) = set(pair) - {killed_id}
    pair[killed_id].kill()

    view = wait_final(stub, job_id, 120)

    assert (view["status"], view["attempts"], view["worker_id"]) == ("completed", 2, other_id), view
    assert pair[other_id].events("job claimed", job_id=job_id, attempt=2)
    assert [
        line
        for line in stub.log_text().splitlines()
        if '"event": "lease expired"' in line and f'"worker_id": "{killed_id}"' in line
    ]
    frames, _ = read_video(video_path(view["result"]))
    assert frames.shape[0] == SMALL["num_frames"]


def finish_in_the_dark(stub: StubProcess, worker: WorkerProcess, prompt: str) -> str:
    """Submit a job, SIGKILL the stub while the worker runs it, and wait until the result waits on disk."""
    job_id = stub.submit(f"{prompt} {BRIEFLY_PACED}", **SMALL)
    wait_job(stub, job_id, lambda v: v["status"] == "running", 60, "running")
    stub.kill()
    worker.wait_for_event("job completed", 60, job_id=job_id)
    worker.wait_for_event("orchestrator call failed, retrying", 30, call="status", job_id=job_id)
    assert (worker.outbox / f"{job_id}.json").exists(), "the undelivered result waits on disk"
    return job_id


def test_results_survive_stub_outages_and_a_worker_restart(
    tmp_path: Path, stub_factory: Callable[..., StubProcess], workers: WorkerSet
) -> None:
    stub = stub_factory(LEASE_SECONDS=60)
    # No BUFFER_WORKER_ID: the id kept in STATE_DIR/worker_id is what lets the next start deliver a result.
    # A short flush at stop: step 2 stops it while the stub is down, and waits that long for nothing.
    first = workers.add(WorkerProcess.buffer(tmp_path / "w", stub.url, name="first", OUTBOX_FLUSH_TIMEOUT_S="1"))
    first.wait_for_event("claiming jobs")
    worker_id = (first.state_dir / "worker_id").read_text().strip()

    # 1. The stub dies mid-job and comes back (same database, same port): the worker kept retrying.
    job_id = finish_in_the_dark(stub, first, "through an outage")
    assert first.events("heartbeat failed"), "heartbeats go on (and fail) during the outage"
    stub.start()
    view = wait_final(stub, job_id, 30)
    assert (view["status"], view["attempts"], view["worker_id"]) == ("completed", 1, worker_id), view
    assert video_path(view["result"]).exists()
    wait_for(lambda: not list(first.outbox.iterdir()), 5, what="the outbox to empty")

    # 2. The stub dies again, and the worker is stopped before it can deliver: the next start does.
    job_id = finish_in_the_dark(stub, first, "finished in the dark")
    assert first.stop() == 0, "SIGTERM with an undeliverable status still exits 0 after OUTBOX_FLUSH_TIMEOUT_S"
    assert first.events("final statuses not delivered in time")
    assert (first.outbox / f"{job_id}.json").exists()
    # v1.2: the attempt was claimed with a secret, and the stored status keeps it: without it, the next start's
    # delivery would be refused (403) as a forgery.
    stored = json.loads((first.outbox / f"{job_id}.json").read_text())
    assert stored["attempt_secret"] and stored["attempt"] == 1
    stub.start()
    assert stub.job(job_id)["status"] == "running", "nothing was delivered while the worker was down"
    env = {**first.env, "BUFFER_EXIT_WHEN_IDLE": "true", "OUTBOX_FLUSH_TIMEOUT_S": "30"}
    second = workers.add(WorkerProcess(first.folder, env, name="second"))
    assert second.wait(120) == 0
    view = stub.job(job_id)
    assert (view["status"], view["worker_id"], view["attempts"]) == ("completed", worker_id, 1), view
    assert not list(first.outbox.iterdir())
    assert second.events("final status delivered", job_id=job_id, outcome="ok")


def test_wrong_api_key_claims_get_401_change_nothing_and_back_off(
    tmp_path: Path, stub_factory: Callable[..., StubProcess], workers: WorkerSet
) -> None:
    stub = stub_factory()
    job_id = stub.submit("nobody may take this", **SMALL)
    bad_key = "not-the-key-0123"
    with_userinfo = stub.url.replace("http://", "http://deploy:url-pa55word@")  # httpx sends it as basic auth
    poll_s = 0.05
    worker = workers.add(
        WorkerProcess.buffer(
            tmp_path / "w", with_userinfo, INTERNAL_API_KEY=bad_key, CLAIM_POLL_S=str(poll_s), RETRY_MAX_S="10"
        )
    )
    wait_for(lambda: len(worker.events("claim refused")) >= 4, 60, interval_s=0.1, what="four refused claims")

    refusals = worker.events("claim refused")
    assert "HTTP 401" in refusals[0]["event"] and "INTERNAL_API_KEY" in refusals[0]["event"]
    delays = [r["retry_in_s"] for r in refusals[:4]]
    # claims.refusal_backoff: 2·CLAIM_POLL_S·2^n plus up to CLAIM_POLL_S of jitter (rounded to 0.01 s in the log)
    low = [2 * poll_s * 2**n for n in range(4)]
    assert all(lo - 0.01 <= d <= lo + poll_s + 0.01 for lo, d in zip(low, delays, strict=True)), delays
    view = stub.job(job_id)
    assert (view["status"], view["attempts"], view["worker_id"]) == ("queued", 0, None)
    assert stub.get("/v1/queue").json()["workers"] == [], "heartbeats were refused too"
    refused_claims = stub.log_text().count('"path": "/internal/buffer/jobs/claim"')
    assert 4 <= refused_claims <= len(worker.events("claim refused")) + 1, "no hidden retries of a 401"
    assert worker.stop() == 0
    assert bad_key not in worker.log_text()
    assert "url-pa55word" not in worker.log_text() and "deploy" not in worker.log_text()
    assert worker.events("settings")[0]["ORCHESTRATOR_BASE_URL"].startswith("http://***@127.0.0.1:")


# ---- heartbeats and the drain, through a recording proxy ---------------------------------------------------


def test_heartbeat_cadence_during_a_long_job_and_sigterm_drain(
    tmp_path: Path, stub_factory: Callable[..., StubProcess], workers: WorkerSet
) -> None:
    stub = stub_factory()
    with RecordingProxy(stub.url) as proxy:
        worker = workers.add(
            WorkerProcess.buffer(
                tmp_path / "w",
                proxy.url,
                BUFFER_WORKER_ID="w-beat",
                HEARTBEAT_INTERVAL_S="2.5",
                PROGRESS_MIN_INTERVAL_S="1",
                OMP_NUM_THREADS="1",
            )
        )
        worker.wait_for_event("claiming jobs")
        job_id = stub.submit("a long one", seed=5, **CPU_HEAVY)
        wait_job(stub, job_id, lambda v: v["stage"] == "decoding", 120, "decoding")
        wait_for(
            lambda: len([s for s in proxy.requests("/heartbeat") if s.body["job_id"] == job_id]) >= 2,
            30,
            what="two busy heartbeats",
        )
        signalled_at = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait(180)
        beats = proxy.requests("/heartbeat")
        claims_after = [s for s in proxy.requests("/claim") if s.at > signalled_at]

    assert code == 0
    view = stub.job(job_id)
    assert view["status"] == "completed", "the drain let the job finish"
    assert view["result"]["timings"]["inference_s"] > 6, "the job kept the CPU busy long enough to matter"
    assert claims_after == [], "no claim after SIGTERM"

    states = [b.body["state"] for b in beats]
    assert states[0] == "starting" and "busy" in states
    draining = [b for b in beats if b.body["state"] == "draining"]
    assert draining and draining[0].body["job_id"] == job_id, "draining announced while the job still ran"
    assert all(b.status == 200 for b in beats)
    # One beat is sent at once when the drain starts; every other one keeps the 2.5 s grid.
    on_grid = [b.at for b in beats if b is not draining[0]]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(on_grid)]
    print("heartbeat gaps:", gaps, "states:", states, "inference_s:", view["result"]["timings"]["inference_s"])
    assert len([b for b in beats if b.body["job_id"] == job_id]) >= 3, "beats kept coming during the job"
    assert all(1.75 <= gap <= 3.25 for gap in gaps), gaps
    progress = [b.body["progress"] for b in beats if b.body["state"] == "busy"]
    assert progress == sorted(progress) and progress[-1] > 0.1, "heartbeats carry the job's progress"
