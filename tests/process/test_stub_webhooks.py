"""Webhooks from a real stub process to a loopback receiver: delivery, retries, give-up, never blocking."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from support.stubs import SHA, Answer, ScriptedServer, StubProcess, wait_for


def _webhook_done(stub: StubProcess, job_id: str, timeout_s: float = 5.0) -> dict:
    return wait_for(
        lambda: (v := stub.job(job_id))["webhook_state"] in ("delivered", "gave_up") and v,
        timeout_s,
        what="webhook delivery",
    )


def test_completed_job_is_posted_once_even_when_reported_twice(
    stub: StubProcess, scripted_server: Callable[..., ScriptedServer]
) -> None:
    receiver = scripted_server([Answer(200)])
    job_id = stub.submit(notify_url=f"{receiver.url}/hooks/done?token=s3cret")
    stub.claim_job("w1")
    assert stub.status(job_id, "w1", "completed").status_code == 200
    assert stub.status(job_id, "w1", "completed").status_code == 200

    view = _webhook_done(stub, job_id)
    assert view["webhook_state"] == "delivered"
    assert [(a["attempt"], a["ok"]) for a in view["webhook_attempts"]] == [(1, True)]
    time.sleep(0.6)  # longer than WEBHOOK_SCAN_S: a second delivery would have started by now
    assert len(receiver.requests) == 1
    hook = receiver.requests[0]
    assert hook.path == "/hooks/done?token=s3cret"
    assert hook.headers["x-stub-job-id"] == job_id
    assert (hook.body["job_id"], hook.body["status"]) == (job_id, "completed")
    assert hook.body["result"]["storage_key"] == f"videos/{job_id}/{SHA}.mp4"
    assert "s3cret" not in stub.log_text(), "the notify_url (and its token) is never logged"


def test_webhook_is_retried_after_500s(
    stub_factory: Callable[..., StubProcess], scripted_server: Callable[..., ScriptedServer]
) -> None:
    stub = stub_factory(WEBHOOK_BASE_DELAY_S=0.15, WEBHOOK_MAX_DELAY_S=1)
    receiver = scripted_server([Answer(500), Answer(503), Answer(204)])
    job_id = stub.submit(notify_url=f"{receiver.url}/hook")
    stub.claim_job("w1")
    error = {"code": "generation_failed", "message": "NaNs in latents", "retryable": False}  # final at once
    assert stub.status(job_id, "w1", "failed", error=error).status_code == 200

    view = _webhook_done(stub, job_id)
    assert view["webhook_state"] == "delivered"
    attempts = view["webhook_attempts"]
    assert [(a["attempt"], a["ok"]) for a in attempts] == [(1, False), (2, False), (3, True)]
    assert set(attempts[0]) == {"attempt", "at", "ok", "type"}, "the public view shows outcomes only"
    assert {a["type"] for a in attempts} == {"job.failed"}
    assert attempts[0]["at"].endswith("Z")
    assert '"status_code": 500' in stub.log_text() and '"error": "HTTP 503"' in stub.log_text(), "the log has them"
    assert len(receiver.requests) == 3
    assert [r.headers["x-stub-webhook-attempt"] for r in receiver.requests] == ["1", "2", "3"]
    assert receiver.requests[2].body["error"] == error
    gaps = [b.at - a.at for a, b in itertools.pairwise(receiver.requests)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3, f"exponential backoff: 0.15 s, then 0.3 s (got {gaps})"


def test_webhook_gives_up_after_max_attempts(
    stub_factory: Callable[..., StubProcess], scripted_server: Callable[..., ScriptedServer]
) -> None:
    stub = stub_factory(WEBHOOK_MAX_ATTEMPTS=3)
    receiver = scripted_server([Answer(500)])
    job_id = stub.submit(notify_url=f"{receiver.url}/hook")
    assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 200, "a stub-side final status notifies too"
    view = _webhook_done(stub, job_id)
    assert view["webhook_state"] == "gave_up"
    assert [a["ok"] for a in view["webhook_attempts"]] == [False, False, False]
    assert len(receiver.requests) == 3
    assert receiver.requests[0].body["error"]["code"] == "cancelled"


def test_unreachable_receiver_is_recorded_as_an_error(
    stub_factory: Callable[..., StubProcess], scripted_server: Callable[..., ScriptedServer]
) -> None:
    stub = stub_factory(WEBHOOK_MAX_ATTEMPTS=2)
    dead = scripted_server([Answer(200)])
    dead_url = f"{dead.url}/hook"
    dead.__exit__(None, None, None)
    job_id = stub.submit(notify_url=dead_url)
    stub.post(f"/v1/jobs/{job_id}/cancel", key=None)
    view = _webhook_done(stub, job_id)
    assert view["webhook_state"] == "gave_up"
    assert [a["ok"] for a in view["webhook_attempts"]] == [False, False]
    assert "Connect" not in str(view), "why it failed is the operator's to read, not the submitter's"
    assert '"error": "ConnectError"' in stub.log_text()


def test_slow_receiver_never_delays_the_status_answer(
    stub: StubProcess, scripted_server: Callable[..., ScriptedServer]
) -> None:
    receiver = scripted_server([Answer(200, delay_s=3)])
    job_id = stub.submit(notify_url=f"{receiver.url}/slow")
    stub.claim_job("w1")
    started = time.monotonic()
    assert stub.status(job_id, "w1", "completed").status_code == 200
    assert time.monotonic() - started < 2.0, "the receiver takes 3 s; the answer does not wait for it"
    wait_for(lambda: receiver.requests, 3, what="the webhook to arrive")
    started = time.monotonic()
    assert stub.claim("w1").status_code == 204 and stub.heartbeat("w1").status_code == 200
    assert time.monotonic() - started < 2.0, "worker calls are served while the webhook is in flight"
