"""Live progress from a real stub process over loopback: the event streams (SSE) and Standard Webhooks.

One stub for the whole module (with STUB_PASSWORD, so every stream is also checked to need it); each test adds
jobs of its own and closes every stream it opens (the per-client cap is small here, and shared).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import signal
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import standardwebhooks.webhooks
from standardwebhooks import Webhook, WebhookVerificationError
from support.sse import Sse, SseReader
from support.stubs import Answer, ScriptedServer, StubProcess, wait_for

PASSWORD = "events-test-password"
KEY = b"standard-webhooks-test-key-32-by"  # 32 bytes
SECRET = "whsec_" + base64.b64encode(KEY).decode()
CAP = 4


@pytest.fixture(scope="module")
def stub(module_stubs: Callable[..., StubProcess]) -> StubProcess:
    stub = module_stubs(
        STUB_PASSWORD=PASSWORD,
        STREAMS_PER_CLIENT=CAP,
        STREAM_SEND_TIMEOUT_S=1,
        STREAM_PING_S=1,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_PROGRESS_S=0.3,
        WEBHOOK_BASE_DELAY_S=0.1,
    )
    stub.http.auth = httpx.BasicAuth("me", PASSWORD)
    return stub


@contextlib.contextmanager
def stream(stub: StubProcess, path: str, **headers: str) -> Iterator[SseReader]:
    timeout = httpx.Timeout(10, read=5)  # a read that waits longer has missed an event
    with stub.http.stream("GET", path, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseReader(response)


def answer(client: httpx.Client, path: str, **headers: str) -> httpx.Response:
    """The answer to a GET that may open a stream, without reading the stream: an opened one is closed at once."""
    with client.stream("GET", path, headers={k: v.encode() for k, v in headers.items()}) as response:
        if response.status_code != 200:
            response.read()
        return response


def opens(stub: StubProcess, path: str) -> bool:
    """Whether a stream opens (then closed at once)."""
    return answer(stub.http, path).status_code == 200


def progress(stub: StubProcess, job_id: str, step: int, total: int = 3, message: str = "", worker: str = "w1") -> None:
    body = {
        "worker_id": worker,
        "stage": "denoising",
        "progress": step / (total + 1),
        "step": step,
        "total_steps": total,
        "message": message,
    }
    assert stub.post(f"/internal/videogen/jobs/{job_id}/progress", body).status_code == 204


def claimed(stub: StubProcess, worker: str = "w1") -> str:
    return stub.claim_job(worker)["job_id"]


def types(events: list[Sse]) -> list[str]:
    return [e.event for e in events]


# ---- one job's stream -------------------------------------------------------------------------------------------


def test_a_jobs_stream_shows_each_change_as_it_happens_then_ends(stub: StubProcess) -> None:
    job_id = stub.submit("a heron in reeds")
    with stream(stub, f"/v1/jobs/{job_id}/events") as events:
        first = next(events)
        assert (first.event, first.json()["status"]) == ("queued", "queued")
        assert first.json()["input"]["prompt"] == "a heron in reeds", "a job's first event draws it on a page"
        assert claimed(stub) == job_id
        assert next(events).event == "claimed"
        assert stub.status(job_id, "w1", "running").status_code == 200
        assert next(events).event == "running"
        steps = []
        for step in (1, 2, 3):
            progress(stub, job_id, step)
            progress(stub, job_id, step)  # the same report again is no news
            event = next(events)
            steps.append((event.event, event.json()["stage"], event.json()["step"], event.json()["total_steps"]))
        assert steps == [("progress", "denoising", n, 3) for n in (1, 2, 3)]
        assert stub.status(job_id, "w1", "completed").status_code == 200
        last = next(events)
        assert last.event == "completed" and last.json()["result"]["storage_key"].startswith(f"videos/{job_id}/")
        assert events.rest() == [], "the stream closes after the final event"
    with stream(stub, f"/v1/jobs/{job_id}/events") as replay:
        everything = replay.rest()
    assert types(everything) == ["queued", "claimed", "running", "progress", "progress", "progress", "completed"]
    ids = [int(e.id or 0) for e in everything]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(e.json()["id"] == int(e.id or 0) for e in everything)


def test_reconnecting_with_last_event_id_misses_nothing_and_repeats_nothing(stub: StubProcess) -> None:
    job_id = stub.submit("a fox at dawn")
    assert claimed(stub) == job_id
    with stream(stub, f"/v1/jobs/{job_id}/events") as events:
        seen = events.take(2)
    assert types(seen) == ["queued", "claimed"]
    progress(stub, job_id, 1)  # while nobody listens
    progress(stub, job_id, 2)
    with stream(stub, f"/v1/jobs/{job_id}/events", **{"Last-Event-ID": seen[-1].id or ""}) as events:
        seen += events.take(2)
        progress(stub, job_id, 3)  # live, after the replay
        seen.append(next(events))
    # A first connection, which cannot send the header, names the id in the query; the header wins over it.
    with stream(stub, f"/v1/jobs/{job_id}/events?last_event_id=1", **{"Last-Event-ID": seen[-1].id or ""}) as events:
        assert stub.status(job_id, "w1", "failed", error={"code": "internal", "message": "x", "retryable": False})
        seen += events.rest()
    with stream(stub, f"/v1/jobs/{job_id}/events") as replay:
        everything = replay.rest()
    assert [(e.id, e.event, e.data) for e in seen] == [(e.id, e.event, e.data) for e in everything]
    assert [e.json().get("step") for e in seen if e.event == "progress"] == [1, 2, 3]
    assert seen[-1].event == "failed"


def test_refusals_are_4xx_never_5xx(stub: StubProcess) -> None:
    job_id = stub.submit("refusals")
    assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 200
    with stream(stub, f"/v1/jobs/{job_id}/events") as events:
        final = events.rest()[-1]
    assert final.event == "cancelled" and final.json()["error"]["code"] == "cancelled"
    # It has the final event: 204, which tells a browser's EventSource to stop reconnecting.
    assert answer(stub.http, f"/v1/jobs/{job_id}/events", **{"Last-Event-ID": final.id or ""}).status_code == 204
    assert answer(stub.http, "/v1/jobs/nope-not-a-job/events").status_code == 404
    for bad in ("abc", "-1", "1.5", "0x10", "１２", "9" * 40, "1 2"):
        for path, headers, name in (
            (f"/v1/jobs/{job_id}/events", {"Last-Event-ID": bad}, "Last-Event-ID"),
            ("/v1/events", {"Last-Event-ID": bad}, "Last-Event-ID"),
            (f"/v1/events?last_event_id={bad}", {}, "last_event_id"),
        ):
            refused = answer(stub.http, path, **headers)
            assert refused.status_code == 400, (bad, path, refused.text)
            assert refused.json()["error"]["message"].startswith(f"{name}: "), refused.text
    past = answer(stub.http, "/v1/events", **{"Last-Event-ID": str(10**12)})
    assert past.status_code == 400 and "past this stub's newest event" in past.json()["error"]["message"]


def test_streams_need_the_password_and_an_allowed_host(stub: StubProcess) -> None:
    job_id = stub.submit("auth")
    for path in (f"/v1/jobs/{job_id}/events", "/v1/events"):
        for auth in (None, ("me", "wrong")):
            with httpx.Client(base_url=stub.url, auth=auth, timeout=5) as client:
                assert answer(client, path).status_code == 401
        with httpx.Client(base_url=stub.url, auth=("me", PASSWORD), timeout=5) as client:
            assert answer(client, path, Host="evil.example").status_code == 421
    stub.post(f"/v1/jobs/{job_id}/cancel", key=None)


def test_an_idle_stream_gets_keep_alive_comments(stub: StubProcess) -> None:
    job_id = stub.submit("idle")
    with stream(stub, f"/v1/jobs/{job_id}/events") as events:
        next(events)
        started = time.monotonic()
        for line in events._lines:  # noqa: SLF001 (the raw lines: a comment is no event)
            if line.startswith(":"):
                break
        assert time.monotonic() - started < 2.5, "STREAM_PING_S is 1 here"
    stub.post(f"/v1/jobs/{job_id}/cancel", key=None)


# ---- every job's stream (the page's) ---------------------------------------------------------------------------


def test_the_all_jobs_stream_starts_now_and_resumes_after_an_id(stub: StubProcess) -> None:
    older = stub.submit("before the stream")
    with stream(stub, "/v1/events") as events:
        queue = next(events)
        assert queue.event == "queue" and queue.id is None
        assert set(queue.json()) == {"now", "counts", "workers", "workers_total"}
        job_id = stub.submit("after it")
        queued = next(events)
        assert (queued.event, queued.json()["job_id"]) == ("queued", job_id)
        assert queued.json()["input"]["prompt"] == "after it"
        stub.post(f"/v1/jobs/{job_id}/cancel", key=None)
        assert next(e for e in events if e.event != "queue").event == "cancelled"
    with stream(stub, "/v1/events", **{"Last-Event-ID": queued.id or ""}) as events:
        replayed = next(e for e in events if e.event != "queue")
    assert (replayed.event, replayed.json()["job_id"]) == ("cancelled", job_id)
    stub.post(f"/v1/jobs/{older}/cancel", key=None)


# ---- bad clients ------------------------------------------------------------------------------------------------


def test_past_the_per_client_cap_a_stream_is_429(stub: StubProcess) -> None:
    job_id = stub.submit("many watchers")
    with contextlib.ExitStack() as open_streams:
        for _ in range(CAP):
            open_streams.enter_context(stream(stub, f"/v1/jobs/{job_id}/events"))
        refused = answer(stub.http, "/v1/events")
        assert refused.status_code == 429 and refused.headers["retry-after"]
        error = refused.json()["error"]
        assert error["code"] == "too_many_streams" and "STREAMS_PER_CLIENT" in error["message"]
    # Closed streams give their places back (as soon as the stub sees the connection go).
    wait_for(lambda: opens(stub, "/v1/events"), 3, what="the places of closed streams")
    stub.post(f"/v1/jobs/{job_id}/cancel", key=None)


def test_a_client_that_stops_reading_is_dropped(stub: StubProcess) -> None:
    job_id = stub.submit("a slow reader")
    assert claimed(stub) == job_id
    auth = base64.b64encode(f"me:{PASSWORD}".encode()).decode()
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it reads nothing; its window stays small
    reader.connect(("127.0.0.1", stub.port))
    reader.sendall(
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\r\n".encode()
    )
    started = time.monotonic()
    step = 0
    while "event stream dropped" not in stub.log_text():
        step += 1
        progress(stub, job_id, step % 100 + 1, 100, message="m" * 1900)  # about 2 KB an event
        assert time.monotonic() - started < 30, f"still not dropped after {step} events"
    sent_kb = step * 2
    # The stub let go of it: its connection ends once the client reads what the socket held, and its place is free.
    reader.settimeout(5)
    received = 0
    with contextlib.suppress(ConnectionResetError):
        while chunk := reader.recv(65536):
            received += len(chunk)
    reader.close()
    assert received < 256 * 1024, f"{received} bytes were held for a reader that took none ({sent_kb} KB sent)"
    with contextlib.ExitStack() as open_streams:
        for _ in range(CAP - 1):
            open_streams.enter_context(stream(stub, f"/v1/jobs/{job_id}/events"))
        assert opens(stub, "/v1/events"), "the dropped stream's place is free"
    stub.status(job_id, "w1", "failed", error={"code": "internal", "message": "x", "retryable": False})


# ---- Standard Webhooks ------------------------------------------------------------------------------------------


def verify(request: Any) -> Any:
    return Webhook(SECRET).verify(request.raw, request.headers)


def test_webhooks_verify_with_the_standard_library_in_order_with_one_id_per_event(
    stub: StubProcess, scripted_server: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = scripted_server([Answer(500), Answer(200)])  # the first delivery is retried
    wanted = ["job.started", "job.progress", "job.completed"]
    job_id = stub.submit("hooks", notify_url=f"{receiver.url}/hook", notify_events=wanted)
    assert claimed(stub) == job_id
    started = time.monotonic()
    for step in range(1, 9):  # 8 reports over about 0.8 s: with WEBHOOK_PROGRESS_S=0.3, 2 to 4 webhooks
        progress(stub, job_id, step, 8)
        time.sleep(0.1)
    spent = time.monotonic() - started
    stub.status(job_id, "w1", "completed")
    view = wait_for(lambda: (v := stub.job(job_id))["webhook_state"] == "delivered" and v, 10, what="the webhooks")

    hooks = receiver.requests
    bodies = [verify(r) for r in hooks]  # each one verifies, or raises
    assert [b["type"] for b in bodies[:2]] == ["job.started", "job.started"], "the 500 was retried"
    assert hooks[0].headers["webhook-id"] == hooks[1].headers["webhook-id"] and hooks[0].raw == hooks[1].raw
    delivered = bodies[1:]
    kinds = [b["type"] for b in delivered]
    assert kinds[0] == "job.started" and kinds[-1] == "job.completed"
    assert set(kinds[1:-1]) == {"job.progress"} and 1 <= len(kinds) - 2 <= spent / 0.3 + 1, kinds
    steps = [b["step"] for b in delivered if b["type"] == "job.progress"]
    assert steps == sorted(steps) and steps[0] == 1, "in order, and the first report is never held back"
    assert len({r.headers["webhook-id"] for r in hooks[1:]}) == len(hooks) - 1, "one id per event"
    assert all(b["job_id"] == job_id for b in bodies) and bodies[-1]["result"]["storage_key"]
    assert [a["type"] for a in view["webhook_attempts"]] == ["job.started", *kinds]
    for hook in hooks:  # the old signature beside it, for one more version
        expected = hmac.new(SECRET.encode(), hook.raw, hashlib.sha256).hexdigest()
        assert hook.headers["x-stub-signature"] == f"sha256={expected}"

    last = hooks[-1]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(last.raw.replace(b'"completed"', b'"failed"'), last.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(last.raw + b" ", last.headers)
    other = "whsec_" + base64.b64encode(b"another key of thirty-two bytes!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(last.raw, last.headers)

    class SixMinutesLater(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + timedelta(minutes=6)

    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", SixMinutesLater)  # a replay, captured and resent
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(last.raw, last.headers)
    monkeypatch.undo()
    assert verify(last)["type"] == "job.completed"
    assert abs(int(last.headers["webhook-timestamp"]) - datetime.now(timezone.utc).timestamp()) < 30


def test_by_default_only_the_final_webhook_is_sent(
    stub: StubProcess, scripted_server: Callable[..., ScriptedServer]
) -> None:
    receiver = scripted_server([Answer(204)])
    job_id = stub.submit("defaults", notify_url=f"{receiver.url}/hook")
    assert claimed(stub) == job_id
    progress(stub, job_id, 1)
    assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 202
    stub.heartbeat("w1", job_id)
    stub.status(job_id, "w1", "failed", error={"code": "cancelled", "message": "stopped", "retryable": False})
    wait_for(lambda: stub.job(job_id)["webhook_state"] == "delivered", 10, what="the webhook")
    time.sleep(0.3)
    assert [verify(r)["type"] for r in receiver.requests] == ["job.cancelled"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"notify_events": ["job.finished"]}, "notify_events: 'job.finished' is not an event type"),
        ({"notify_events": []}, "notify_events: must be a non-empty list"),
        ({"notify_events": "job.completed"}, "notify_events: must be a non-empty list"),
        ({"notify_events": ["job.completed", 3]}, "notify_events: must be a non-empty list"),
        ({"notify_events": ["job.progress"], "notify_url": None}, "notify_events: needs a notify_url"),
    ],
)
def test_notify_events_are_checked_at_submission(stub: StubProcess, fields: dict[str, Any], message: str) -> None:
    body = {"prompt": "checked", "notify_url": "http://127.0.0.1:9/hook", **fields}
    answer = stub.post("/v1/jobs", {k: v for k, v in body.items() if v is not None}, key=None)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["message"].startswith(message), answer.text


def test_a_stop_signal_ends_open_streams_and_the_stub_exits_cleanly(stub_factory: Callable[..., StubProcess]) -> None:
    stub = stub_factory()  # its own: this one is stopped
    job_id = stub.submit("still queued when the stub stops")
    with stream(stub, f"/v1/jobs/{job_id}/events") as one, stream(stub, "/v1/events") as every:
        assert next(one).event == "queued" and next(every).event == "queue"
        started = time.monotonic()
        assert stub.kill(signal.SIGTERM) == 0, "a clean shutdown, open streams and all"
        assert time.monotonic() - started < 8, "open streams do not hold the shutdown up"
        assert one.rest(timeout_s=2) == [] and [e.event for e in every.rest(timeout_s=2)] in ([], ["queue"])
