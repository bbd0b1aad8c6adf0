"""Webhooks as an attacker would use them, against a real stub: signed deliveries, vetted targets, only
outcomes shown, and every delivery failure (even ones httpx does not wrap) ends in `gave_up`."""

from __future__ import annotations

import hashlib
import hmac
import socket
from collections.abc import Callable

import pytest
from standardwebhooks import Webhook
from support.stubs import WEBHOOK_SECRET, Answer, ScriptedServer, StubProcess, wait_for

from orchestrator_stub.db import Database
from worker_app_fastwan.edge.addresses import forbidden_address


def _given_up(stub: StubProcess, job_id: str) -> dict:
    return wait_for(
        lambda: (v := stub.job(job_id))["webhook_state"] in ("delivered", "gave_up") and v, 10, what="webhook end"
    )


def test_each_delivery_is_signed_with_hmac_sha256_of_the_body(
    stub: StubProcess, scripted_server: Callable[..., ScriptedServer]
) -> None:
    receiver = scripted_server([Answer(500), Answer(200)])
    job_id = stub.submit(notify_url=f"{receiver.url}/hook")
    stub.post(f"/v1/jobs/{job_id}/cancel", key=None)
    assert _given_up(stub, job_id)["webhook_state"] == "delivered"
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        expected = hmac.new(WEBHOOK_SECRET.encode(), request.raw, hashlib.sha256).hexdigest()
        assert request.headers["x-stub-signature"] == f"sha256={expected}"
        assert request.headers["content-type"] == "application/json"
        # A secret from before the Standard Webhooks form (no whsec_) keeps working: its UTF-8 bytes are the key.
        assert Webhook(WEBHOOK_SECRET.encode()).verify(request.raw, request.headers)["type"] == "job.cancelled"
    assert WEBHOOK_SECRET not in stub.log_text()


UNSAFE = [
    ("http://127.0.0.1:9/hook", "public host"),
    ("http://localhost:9/hook", "public host"),
    ("http://api.localhost/hook", "public host"),
    ("http://[::1]/hook", "public host"),
    ("http://[::ffff:10.0.0.1]/hook", "public host"),
    ("http://[2002:7f00:1::]/hook", "public host"),
    ("http://169.254.169.254/latest/meta-data", "public host"),
    ("http://192.168.1.1/hook", "public host"),
    ("http://example.com:99999/hook", "port must be 1-65535"),
    ("http://example.com:0/hook", "port must be 1-65535"),
    ("ftp://example.com/hook", "http(s) URL"),
    ("http:///hook", "http(s) URL"),
]


def test_unsafe_notify_url_is_refused_at_submission(stub_factory: Callable[..., StubProcess]) -> None:
    stub = stub_factory(WEBHOOK_ALLOW_PRIVATE="false")
    for url, reason in UNSAFE:
        response = stub.post("/v1/jobs", {"prompt": "a fox", "notify_url": url}, key=None)
        assert response.status_code == 422, (url, response.text)
        message = response.json()["error"]["message"]
        assert message.startswith("notify_url: ") and reason in message, (url, message)
    assert stub.get("/v1/jobs").json()["total"] == 0
    for url in ("https://hooks.example.com/x?token=1", "http://93.184.216.34:8443/hook"):
        response = stub.post("/v1/jobs", {"prompt": "a fox", "notify_url": url}, key=None)
        assert response.status_code == 201, "public targets are accepted, names without resolving them"


def test_without_a_secret_notify_url_is_refused(stub_factory: Callable[..., StubProcess]) -> None:
    stub = stub_factory(WEBHOOK_SECRET="")
    response = stub.post("/v1/jobs", {"prompt": "a fox", "notify_url": "http://127.0.0.1:9/hook"}, key=None)
    assert response.status_code == 422 and "WEBHOOK_SECRET" in response.json()["error"]["message"]
    assert stub.post("/v1/jobs", {"prompt": "a fox"}, key=None).status_code == 201, "jobs without one still run"


def test_a_name_that_resolves_to_a_private_address_is_never_contacted(
    stub_factory: Callable[..., StubProcess], scripted_server: Callable[..., ScriptedServer]
) -> None:
    import ipaddress

    name = socket.gethostname()  # resolves through /etc/hosts to loopback or the box's private address
    try:
        address = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)[0][4][0]
    except OSError:
        pytest.skip(f"{name} does not resolve here")
    if not forbidden_address(ipaddress.ip_address(address)):
        pytest.skip(f"{name} resolves to a public address here")
    receiver = scripted_server([Answer(200)])
    stub = stub_factory(WEBHOOK_ALLOW_PRIVATE="false", WEBHOOK_MAX_ATTEMPTS=2)
    port = receiver.url.rsplit(":", 1)[1]
    job_id = stub.submit(notify_url=f"http://{name}:{port}/hook")
    stub.post(f"/v1/jobs/{job_id}/cancel", key=None)
    view = _given_up(stub, job_id)
    assert view["webhook_state"] == "gave_up"
    assert receiver.requests == [], "vetted before connecting"
    assert [a["ok"] for a in view["webhook_attempts"]] == [False, False]
    assert "non-public" not in str(view) and address not in str(view), "the submitter learns nothing"
    assert "non-public address" in stub.log_text(), "the operator does"


BAD_URLS = [
    "http://127.0.0.1:99999/hook",  # OverflowError / an ExceptionGroup from the connect, not an httpx error
    "http://" + "a" * 64 + ".example/hook",  # a DNS label over 63 characters: UnicodeError from idna
    "http://127.0.0.1:-1/hook",
]


@pytest.mark.parametrize("allow_private", ["true", "false"])
def test_every_delivery_error_is_a_failed_attempt_ending_in_gave_up(
    stub_factory: Callable[..., StubProcess], allow_private: str
) -> None:
    """URLs the submission check refuses today may sit in an older database: delivery must still end."""
    stub = stub_factory(WEBHOOK_ALLOW_PRIVATE=allow_private, WEBHOOK_MAX_ATTEMPTS=3)
    job_ids = [stub.submit(notify_url="https://hooks.example.com/hook") for _ in BAD_URLS]
    stub.kill()
    database = Database(stub.database or str(stub.db))  # SQLite or PostgreSQL, whichever the stub runs on
    with database.transaction(None) as tx:
        for job_id, bad_url in zip(job_ids, BAD_URLS, strict=True):
            tx.run("UPDATE jobs SET notify_url = :url WHERE job_id = :j", url=bad_url, j=job_id)
    database.dispose()
    stub.start()
    for job_id in job_ids:
        assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 200
    for job_id, bad_url in zip(job_ids, BAD_URLS, strict=True):
        view = _given_up(stub, job_id)
        assert view["webhook_state"] == "gave_up", bad_url
        assert [a["ok"] for a in view["webhook_attempts"]] == [False, False, False], bad_url
    assert "webhook delivery crashed" not in stub.log_text()
