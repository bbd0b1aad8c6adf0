"""A worker's `failed` report: a retryable one goes back to the queue while attempts remain, anything else is final."""

from __future__ import annotations

from collections.abc import Callable

from support.stubs import Answer, ScriptedServer, StubProcess, wait_for

OOM = {"code": "out_of_memory", "message": "CUDA out of memory", "retryable": True}
UPLOAD = {"code": "upload_failed", "message": "storage answered 503", "retryable": True}


def test_retryable_failure_requeues_until_the_last_attempt(
    stub_factory: Callable[..., StubProcess], scripted_server: Callable[..., ScriptedServer]
) -> None:
    receiver = scripted_server([Answer(200)])
    stub = stub_factory(MAX_ATTEMPTS=2)
    job_id = stub.submit(notify_url=f"{receiver.url}/hook")
    stub.claim_job("w1")
    assert stub.status(job_id, "w1", "running").status_code == 200
    assert stub.status(job_id, "w1", "failed", error=OOM).status_code == 200

    view = stub.job(job_id)
    assert (view["status"], view["worker_id"], view["attempts"], view["error"]) == ("queued", None, 1, None)
    assert view["last_error"] == OOM
    assert [(r["attempt"], r["worker_id"], r["error"]) for r in view["requeues"]] == [(1, "w1", OOM)]
    assert view["webhook_state"] is None, "not final: no webhook yet"
    assert stub.status(job_id, "w1", "failed", error=OOM).status_code == 409, "w1 no longer holds it"

    again = stub.claim_job("w2")
    assert (again["job_id"], again["attempt"]) == (job_id, 2)
    assert stub.status(job_id, "w2", "failed", error=UPLOAD).status_code == 200  # attempt 2 of 2: final

    view = wait_for(lambda: (v := stub.job(job_id))["webhook_state"] == "delivered" and v, 5, what="the webhook")
    assert (view["status"], view["error"], view["attempts"], view["worker_id"]) == ("failed", UPLOAD, 2, "w2")
    assert stub.status(job_id, "w2", "failed", error=UPLOAD).status_code == 200, "the same final status again"
    assert stub.claim("w3").status_code == 204
    assert len(receiver.requests) == 1, "one webhook, for the final outcome only"
    assert (receiver.requests[0].body["status"], receiver.requests[0].body["error"]) == ("failed", UPLOAD)


def test_non_retryable_or_cancelled_failure_is_final_at_once(stub: StubProcess) -> None:
    bad, cancelled = stub.submit("bad input"), stub.submit("cancelled")
    assert [stub.claim_job(worker)["job_id"] for worker in ("w1", "w2")] == [bad, cancelled]
    invalid = {"code": "invalid_input", "message": "image_url: not an image", "retryable": False}
    assert stub.status(bad, "w1", "failed", error=invalid).status_code == 200
    # A retryable failure of a job whose cancel was requested: the user gave up on it, so it is not re-run.
    assert stub.post(f"/v1/jobs/{cancelled}/cancel", key=None).status_code == 202
    assert stub.status(cancelled, "w2", "failed", error=OOM).status_code == 200

    for job_id, error in ((bad, invalid), (cancelled, OOM)):
        view = stub.job(job_id)
        assert (view["status"], view["error"], view["attempts"], view["requeues"]) == ("failed", error, 1, []), job_id
    assert stub.claim("w3").status_code == 204
