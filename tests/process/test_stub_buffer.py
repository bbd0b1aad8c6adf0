"""Buffer-mode protocol against a real stub process: claim, heartbeat, status, progress, auth."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from support.stubs import API_KEY, SHA, StubProcess


def test_submit_claim_run_complete(stub: StubProcess) -> None:
    job_id = stub.submit("a lighthouse at dusk", width=640, height=352, num_frames=81, seed=7)
    assert stub.job(job_id)["status"] == "queued"

    job = stub.claim_job("w1")
    assert job["job_id"] == job_id
    assert job["attempt"] == 1
    assert job["lease_seconds"] == 30
    assert job["input"]["prompt"] == "a lighthouse at dusk"
    assert (job["input"]["width"], job["input"]["height"], job["input"]["num_frames"], job["input"]["seed"]) == (
        640,
        352,
        81,
        7,
    )
    assert stub.claim("w2").status_code == 204, "the only job is taken"

    assert stub.status(job_id, "w1", "running").status_code == 200
    progress = {"worker_id": "w1", "stage": "denoising", "progress": 0.5, "step": 2, "total_steps": 3}
    assert stub.post(f"/internal/videogen/jobs/{job_id}/progress", progress).status_code == 204
    view = stub.job(job_id)
    assert (view["status"], view["stage"], view["progress"], view["step"], view["worker_id"]) == (
        "running",
        "denoising",
        0.5,
        2,
        "w1",
    )

    response = stub.status(job_id, "w1", "completed")
    assert response.status_code == 200, response.text
    view = stub.job(job_id)
    assert view["status"] == "completed"
    assert view["result"]["storage_key"] == f"videos/{job_id}/{SHA}.mp4"
    assert view["attempts"] == 1
    assert view["progress"] == 1.0
    assert view["completed_at"] is not None and view["completed_at"].endswith("Z")
    assert stub.claim("w1").status_code == 204


def test_two_workers_never_get_the_same_job(stub: StubProcess) -> None:
    first, second = stub.submit("one"), stub.submit("two")
    a, b = stub.claim_job("w1"), stub.claim_job("w2")
    assert {a["job_id"], b["job_id"]} == {first, second}
    assert a["job_id"] == first, "oldest first"

    job_ids = {stub.submit(f"job {n}") for n in range(24)}

    def claim_all(worker: str) -> list[str]:
        got = []
        while (response := stub.claim(worker)).status_code == 200:
            got.append(response.json()["job"]["job_id"])
        return got

    with ThreadPoolExecutor(6) as pool:
        claimed = [job for jobs in pool.map(claim_all, [f"racer-{n}" for n in range(6)]) for job in jobs]
    assert len(claimed) == len(set(claimed)) == 24, "a job was handed out twice or lost"
    assert set(claimed) == job_ids


def test_wrong_or_missing_key_is_refused_and_changes_nothing(stub: StubProcess) -> None:
    job_id = stub.submit()
    calls = [
        ("/internal/buffer/jobs/claim", {"worker_id": "intruder"}),
        ("/internal/buffer/workers/intruder/heartbeat", {"state": "idle"}),
        (
            f"/internal/buffer/jobs/{job_id}/status",
            {
                "worker_id": "intruder",
                "status": "failed",
                "error": {"code": "internal", "message": "x", "retryable": False},
            },
        ),
        (
            f"/internal/videogen/jobs/{job_id}/progress",
            {"worker_id": "intruder", "stage": "denoising", "progress": 0.9},
        ),
    ]
    for path, body in calls:
        for key in (None, "wrong-key", API_KEY + "x", ""):
            response = stub.post(path, body, key=key)
            assert response.status_code == 401, (path, key, response.text)

    view = stub.job(job_id)
    assert (view["status"], view["attempts"], view["worker_id"], view["progress"]) == ("queued", 0, None, 0.0)
    assert stub.get("/v1/queue").json()["workers"] == []
    assert stub.claim_job("w1")["job_id"] == job_id, "the real key still works"
    log = stub.log_text()
    assert "internal call refused" in log
    assert API_KEY not in log and "wrong-key" not in log


def test_status_from_a_worker_that_does_not_hold_the_job_is_409(stub: StubProcess) -> None:
    job_id = stub.submit()
    queued = stub.status(job_id, "w1", "running")
    assert queued.status_code == 409, "nobody holds a queued job"
    stub.claim_job("w1")
    assert stub.status(job_id, "w2", "completed").status_code == 409
    assert stub.status("no-such-job", "w1", "running").status_code == 409, "unknown: not this worker's either"
    missing_result = stub.post(f"/internal/buffer/jobs/{job_id}/status", {"worker_id": "w1", "status": "completed"})
    assert missing_result.status_code == 422
    assert stub.job(job_id)["status"] == "claimed", "refused reports change nothing"
    assert stub.status(job_id, "w1", "completed").status_code == 200
    assert stub.status(job_id, "w2", "completed").status_code == 409, "another worker cannot complete it again"
    failed = {"error": {"code": "internal", "message": "late", "retryable": True}}
    assert stub.status(job_id, "w1", "failed", **failed).status_code == 409, "a different final status is a conflict"
    assert stub.job(job_id)["status"] == "completed"


def test_final_status_twice_is_200_twice(stub: StubProcess) -> None:
    job_id = stub.submit()
    stub.claim_job("w1")
    error = {"code": "invalid_input", "message": "image_url: not an image", "retryable": False}
    assert stub.status(job_id, "w1", "failed", error=error).status_code == 200
    assert stub.status(job_id, "w1", "failed", error=error).status_code == 200
    view = stub.job(job_id)
    assert view["status"] == "failed"
    assert view["error"] == error


def test_claim_respects_worker_capabilities(stub: StubProcess) -> None:
    big = stub.submit("big", width=1280, height=704)
    i2v = stub.submit("animate", image_url="https://example.com/cat.png", width=512, height=512)
    small = stub.submit("small", width=512, height=512, num_frames=33)

    t2v_small = {"capabilities": {"modes": ["t2v"], "max_width": 640, "max_height": 640, "max_frames": 81}}
    assert stub.claim("small-gpu", **t2v_small).json()["job"]["job_id"] == small
    assert stub.claim("small-gpu", **t2v_small).status_code == 204, "the rest is too big or image-to-video"
    assert stub.claim_job("big-gpu")["job_id"] == big
    assert stub.claim_job("big-gpu")["job_id"] == i2v


def test_progress_for_unknown_job_is_accepted_and_ignored(stub: StubProcess) -> None:
    body = {"worker_id": "salad-node", "stage": "decoding", "progress": 0.9}
    assert stub.post("/internal/videogen/jobs/salad-job-123/progress", body).status_code == 204
    assert stub.get("/v1/jobs/salad-job-123").status_code == 404
    bad = {"worker_id": "w", "stage": "nonsense", "progress": 2}
    assert stub.post("/internal/videogen/jobs/salad-job-123/progress", bad).status_code == 422


def test_progress_counts_only_from_the_worker_holding_the_job(stub: StubProcess) -> None:
    job_id = stub.submit()
    path = f"/internal/videogen/jobs/{job_id}/progress"

    def report(worker_id: str, progress: float) -> None:
        body = {"worker_id": worker_id, "stage": "denoising", "progress": progress, "step": 1, "total_steps": 3}
        assert stub.post(path, body).status_code == 204, "best effort: always acknowledged"

    stub.claim_job("w1")
    report("w1", 0.3)
    report("w2", 0.9)  # never held it
    assert (stub.job(job_id)["progress"], stub.job(job_id)["worker_id"]) == (0.3, "w1")

    oom = {"code": "out_of_memory", "message": "CUDA out of memory", "retryable": True}
    assert stub.status(job_id, "w1", "failed", error=oom).status_code == 200  # requeued: w1 lost it
    report("w1", 0.6)
    assert (stub.job(job_id)["status"], stub.job(job_id)["progress"]) == ("queued", 0.0)
    stub.claim_job("w2")
    report("w2", 0.2)
    report("w1", 0.8)  # still running its copy: must not overwrite the holder's numbers
    view = stub.job(job_id)
    assert (view["worker_id"], view["progress"], view["attempts"]) == ("w2", 0.2, 2)
