"""The public /v1 API against a real stub process: validation, idempotency, paging, cancel, queue view."""

from __future__ import annotations

from support.stubs import StubProcess


def _submit(stub: StubProcess, body: object, key: str | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    return stub.post("/v1/jobs", body, key=None, headers=headers)


def test_invalid_input_is_422_naming_the_field_and_creates_nothing(stub: StubProcess) -> None:
    cases = {
        "width": {"prompt": "x", "width": 500},
        "num_frames": {"prompt": "x", "num_frames": 100},
        "num_inference_steps": {"prompt": "x", "num_inference_steps": 4},  # never distilled: 1-3 only
        "prompt": {"prompt": "   "},
        "image_url": {"prompt": "x", "image_url": "ftp://example.com/a.png"},
        "notify_url": {"prompt": "x", "notify_url": "not a url"},
        "body": ["a", "list"],
    }
    for field, body in cases.items():
        response = _submit(stub, body)
        assert response.status_code == 422, (field, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_input"
        assert error["message"].startswith(f"{field}:"), error
    missing = _submit(stub, {"width": 512})
    assert missing.status_code == 422 and "prompt" in missing.json()["error"]["message"]
    assert stub.get("/v1/jobs").json()["total"] == 0


def test_idempotency_key_returns_the_same_job(stub: StubProcess) -> None:
    body = {"prompt": "same", "seed": 1}
    first = _submit(stub, body, key="order-17")
    assert first.status_code == 201
    replay = _submit(stub, {**body, "unknown_field": "ignored"}, key="order-17")
    assert replay.status_code == 200
    assert replay.json()["job_id"] == first.json()["job_id"]
    assert replay.headers["location"] == f"/v1/jobs/{first.json()['job_id']}"

    reused = _submit(stub, {"prompt": "different"}, key="order-17")
    assert reused.status_code == 422
    assert "Idempotency-Key" in reused.json()["detail"]
    other = _submit(stub, body, key="order-18")
    assert other.status_code == 201 and other.json()["job_id"] != first.json()["job_id"]
    assert _submit(stub, body).json()["job_id"] not in (first.json()["job_id"], other.json()["job_id"])
    assert stub.get("/v1/jobs").json()["total"] == 3


def test_list_pages_newest_first_and_filters_by_status(stub: StubProcess) -> None:
    ids = [stub.submit(f"job {n}") for n in range(5)]
    done = stub.claim_job("w1")["job_id"]
    assert stub.status(done, "w1", "completed").status_code == 200
    running = stub.claim_job("w1")["job_id"]
    assert stub.status(running, "w1", "running").status_code == 200

    pages = [stub.get("/v1/jobs", limit=2, offset=offset).json() for offset in (0, 2, 4)]
    assert [p["total"] for p in pages] == [5, 5, 5]
    assert [len(p["jobs"]) for p in pages] == [2, 2, 1]
    listed = [job["job_id"] for page in pages for job in page["jobs"]]
    assert listed == ids[::-1]

    queued = stub.get("/v1/jobs", status="queued").json()
    assert queued["total"] == 3 and {j["job_id"] for j in queued["jobs"]} == set(ids[2:])
    assert [j["job_id"] for j in stub.get("/v1/jobs", status="completed").json()["jobs"]] == [done]
    assert [j["job_id"] for j in stub.get("/v1/jobs", status="running").json()["jobs"]] == [running]
    assert stub.get("/v1/jobs", status="bogus").status_code == 422
    assert stub.get("/v1/jobs", limit=0).status_code == 422
    assert stub.get("/v1/jobs/does-not-exist").status_code == 404


def test_cancel_a_queued_job(stub: StubProcess) -> None:
    job_id = stub.submit()
    response = stub.post(f"/v1/jobs/{job_id}/cancel", key=None)
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["error"]["code"] == "cancelled"
    assert stub.claim("w1").status_code == 204, "a cancelled job is never handed out"
    assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 409
    assert stub.post("/v1/jobs/nope/cancel", key=None).status_code == 404


def test_cancel_a_running_job_reaches_its_worker_by_heartbeat(stub: StubProcess) -> None:
    job_id = stub.submit()
    stub.claim_job("w1")
    assert stub.status(job_id, "w1", "running").status_code == 200
    assert stub.heartbeat("w1", job_id).json()["cancel_job_ids"] == []

    response = stub.post(f"/v1/jobs/{job_id}/cancel", key=None)
    assert response.status_code == 202
    assert (response.json()["status"], response.json()["cancel_requested"]) == ("running", True)
    assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 202, "asking again is harmless"
    assert stub.heartbeat("w1", job_id).json()["cancel_job_ids"] == [job_id]
    assert stub.heartbeat("w1", None, state="busy").json()["cancel_job_ids"] == [job_id], "even without naming it"
    assert stub.heartbeat("w2").json()["cancel_job_ids"] == []

    error = {"code": "cancelled", "message": "cancelled at step 2", "retryable": False}
    assert stub.status(job_id, "w1", "failed", error=error).status_code == 200
    view = stub.job(job_id)
    assert (view["status"], view["error"]["code"]) == ("failed", "cancelled")
    assert stub.heartbeat("w1").json()["cancel_job_ids"] == []
    assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 409


def test_queue_counts_and_workers(stub: StubProcess) -> None:
    ids = [stub.submit(f"job {n}") for n in range(4)]
    stub.claim_job("gpu-a")
    stub.claim_job("gpu-b")
    assert stub.status(ids[1], "gpu-b", "running").status_code == 200
    assert stub.heartbeat("gpu-b", ids[1]).status_code == 200
    assert stub.post(f"/v1/jobs/{ids[3]}/cancel", key=None).status_code == 200

    queue = stub.get("/v1/queue").json()
    assert queue["counts"] == {"queued": 1, "claimed": 1, "running": 1, "completed": 0, "failed": 1}
    workers = {w["worker_id"]: w for w in queue["workers"]}
    assert set(workers) == {"gpu-a", "gpu-b"}
    assert (workers["gpu-b"]["state"], workers["gpu-b"]["job_id"]) == ("busy", ids[1])
    assert workers["gpu-b"]["gpu"]["name"] == "Test GPU"
    assert workers["gpu-b"]["last_heartbeat"].endswith("Z")
    assert workers["gpu-a"]["last_heartbeat"] is None, "gpu-a claimed but never sent a heartbeat"
    assert workers["gpu-a"]["job_id"] == ids[0]
