"""Salad-style dispatch from a real stub process to a loopback stand-in for a queue-mode worker."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from support.stubs import API_KEY, Answer, Recorded, ScriptedServer, StubProcess, job_result, wait_for

StartStub = Callable[..., StubProcess]
StartServer = Callable[..., ScriptedServer]


def _final(stub: StubProcess, job_id: str, timeout_s: float = 6.0) -> dict:
    return wait_for(
        lambda: (v := stub.job(job_id))["status"] in ("completed", "failed") and v,
        timeout_s,
        what="the dispatched job to finish",
    )


def _busy(code: str = "generation_failed") -> dict:
    return {"error": {"code": code, "message": "GPU busy, try again", "retryable": True}}


def test_retryable_answer_then_success(stub_factory: StartStub, scripted_server: StartServer) -> None:
    stub_box: list[StubProcess] = []

    def report_progress(request: Recorded) -> None:
        # What a queue-mode worker does while it runs: progress to the orchestrator, by its Salad job id.
        body = {"worker_id": "salad-node-1", "stage": "uploading", "progress": 0.95, "step": 3, "total_steps": 3}
        httpx.post(
            f"{stub_box[0].url}/internal/videogen/jobs/{request.headers['salad-job-id']}/progress",
            json=body,
            headers={"X-Internal-Api-Key": API_KEY},
            timeout=5,
        )

    result = Answer(200, lambda request: job_result(request.headers["salad-job-id"]))
    worker = scripted_server([Answer(503, _busy()), result], on_request=report_progress)
    stub_box.append(stub := stub_factory("--dispatch-to", f"{worker.url}/generate"))
    job_id = stub.submit("a koi pond", seed=3)

    view = _final(stub, job_id)
    assert view["status"] == "completed", view
    assert view["result"] == job_result(job_id)
    assert (view["stage"], view["step"], view["worker_id"]) == ("uploading", 3, "salad-dispatcher")
    assert [(a["attempt"], a["status_code"]) for a in view["dispatch_attempts"]] == [(1, 503), (2, 200)]
    assert len(worker.requests) == 2
    for request in worker.requests:
        assert request.path == "/generate"
        assert request.headers["salad-job-id"] == job_id
        assert (request.body["job_id"], request.body["prompt"], request.body["seed"]) == (job_id, "a koi pond", 3)


def test_invalid_input_answer_is_final(stub_factory: StartStub, scripted_server: StartServer) -> None:
    error = {"code": "invalid_input", "message": "width: too wide for this GPU", "retryable": True}
    worker = scripted_server([Answer(422, {"error": error})])
    stub = stub_factory("--dispatch-to", f"{worker.url}/generate")
    job_id = stub.submit()
    view = _final(stub, job_id)
    assert view["status"] == "failed"
    assert view["error"] == error | {"retryable": False}, "a final answer is never retryable"
    assert [a["status_code"] for a in view["dispatch_attempts"]] == [422]
    assert len(worker.requests) == 1


def test_gives_up_after_four_attempts_with_the_last_error(
    stub_factory: StartStub, scripted_server: StartServer
) -> None:
    worker = scripted_server(
        [Answer(429, _busy()), Answer(500, {"no": "error object"}), Answer(408), Answer(503, _busy("out_of_memory"))]
    )
    stub = stub_factory("--dispatch-to", f"{worker.url}/generate")
    first, second = stub.submit("first"), stub.submit("second")
    view = _final(stub, first)
    assert view["status"] == "failed"
    assert view["error"]["code"] == "out_of_memory", "the last answer's error"
    assert [a["status_code"] for a in view["dispatch_attempts"]] == [429, 500, 408, 503]
    assert view["dispatch_attempts"][1]["error"] == "worker answered HTTP 500"
    assert _final(stub, second)["status"] == "failed", "then the next job, one at a time"
    assert len(worker.requests) == 8
    assert [r.headers["salad-job-id"] for r in worker.requests] == [first] * 4 + [second] * 4


def test_unreachable_worker_is_retried_then_failed(stub_factory: StartStub, scripted_server: StartServer) -> None:
    gone = scripted_server([Answer(200)])
    url = f"{gone.url}/generate"
    gone.__exit__(None, None, None)
    stub = stub_factory("--dispatch-to", url)
    view = _final(stub, stub.submit())
    assert view["status"] == "failed"
    assert view["error"]["code"] == "internal" and "unreachable" in view["error"]["message"]
    assert [a["status_code"] for a in view["dispatch_attempts"]] == [None] * 4


def test_cancel_aborts_the_request_in_flight(stub_factory: StartStub, scripted_server: StartServer) -> None:
    worker = scripted_server([Answer(200, {"never": "used"}, delay_s=30)])
    stub = stub_factory("--dispatch-to", f"{worker.url}/generate", LEASE_SECONDS=1.5)
    job_id = stub.submit()
    wait_for(lambda: worker.requests, 5, what="the dispatch to start")
    assert stub.job(job_id)["status"] == "running"
    assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 202
    view = _final(stub, job_id, timeout_s=3)
    assert (view["status"], view["error"]["code"]) == ("failed", "cancelled")
    assert len(worker.requests) == 1
