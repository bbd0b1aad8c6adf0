"""Hostile inputs to a real stub process over loopback: each is a clear 4xx, and the stub keeps serving."""

from __future__ import annotations

import json
import socket

import pytest
from support.stubs import API_KEY, StubProcess

from worker_app_fastwan.edge.body_guard import MAX_BODY_BYTES

LONE = "\\ud800"  # the JSON escape of a lone surrogate: valid JSON, not valid Unicode


def _total(stub: StubProcess) -> int:
    return stub.get("/v1/jobs").json()["total"]


def _post_raw(stub: StubProcess, path: str, raw: bytes, key: str | None = None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-Internal-Api-Key"] = key
    return stub.http.post(path, content=raw, headers=headers)


def _assert_still_serving(stub: StubProcess, jobs: int) -> None:
    """Every job still reads (no 500 from a bad string), and the refused request stored nothing."""
    listing = stub.get("/v1/jobs", limit="500")
    assert listing.status_code == 200, listing.text
    assert listing.json()["total"] == jobs
    assert stub.get("/v1/queue").status_code == 200


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("prompt", f'{{"prompt": "a fox {LONE}"}}'),
        ("negative_prompt", f'{{"prompt": "a fox", "negative_prompt": "{LONE}"}}'),
        ("image_url", f'{{"prompt": "a fox", "image_url": "https://example.com/{LONE}.png"}}'),
        ("notify_url", f'{{"prompt": "a fox", "notify_url": "https://example.com/{LONE}"}}'),
        ("extra.deep[1]", f'{{"prompt": "a fox", "extra": {{"deep": ["ok", "{LONE}"]}}}}'),
    ],
)
def test_lone_surrogate_in_a_submission_is_422_naming_the_field(
    shared_stub: StubProcess, field: str, body: str
) -> None:
    before = _total(shared_stub)
    response = _post_raw(shared_stub, "/v1/jobs", body.encode())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"].startswith(f"{field}: ") and "not valid Unicode" in error["message"]
    _assert_still_serving(shared_stub, before)


def test_lone_surrogate_in_a_field_name_is_422(shared_stub: StubProcess) -> None:
    response = _post_raw(shared_stub, "/v1/jobs", f'{{"prompt": "a fox", "{LONE}x": 1}}'.encode())
    assert response.status_code == 422
    assert "field name is not valid Unicode" in response.json()["error"]["message"]


def test_lone_surrogate_in_worker_bodies_is_422_and_nothing_breaks(shared_stub: StubProcess) -> None:
    before = _total(shared_stub)
    job_id = shared_stub.submit()
    while shared_stub.claim_job("w1")["job_id"] != job_id:  # other tests' jobs are older
        pass
    beat = f'{{"state": "busy", "job_id": "{job_id}", "gpu": {{"name": "RTX {LONE}"}}}}'
    response = _post_raw(shared_stub, "/internal/buffer/workers/w1/heartbeat", beat.encode(), key=API_KEY)
    assert response.status_code == 422 and "gpu.name" in response.text
    progress = f'{{"worker_id": "w1", "stage": "denoising", "progress": 0.5, "message": "{LONE}"}}'
    response = _post_raw(shared_stub, f"/internal/videogen/jobs/{job_id}/progress", progress.encode(), key=API_KEY)
    assert response.status_code == 422 and "message" in response.text
    view = shared_stub.job(job_id)
    assert view["status"] == "claimed" and view["message"] is None
    _assert_still_serving(shared_stub, before + 1)
    assert shared_stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 202


def test_a_body_over_64_kib_is_413_and_not_stored(shared_stub: StubProcess) -> None:
    before = _total(shared_stub)

    def body_of(size: int) -> bytes:
        head = b'{"prompt": "a fox", "pad": "'
        return head + b"a" * (size - len(head) - 2) + b'"}'

    assert len(body_of(MAX_BODY_BYTES)) == MAX_BODY_BYTES == 65536
    assert _post_raw(shared_stub, "/v1/jobs", body_of(MAX_BODY_BYTES)).status_code == 201, "exactly the cap is fine"
    response = _post_raw(shared_stub, "/v1/jobs", body_of(MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert "65536-byte limit" in response.json()["error"]["message"]
    _assert_still_serving(shared_stub, before + 1)


def _raw_http(stub: StubProcess, request: bytes) -> bytes:
    """Send `request` (no more: bytes the stub never reads make its close a reset, which can overtake its
    answer) and read until the stub closes the connection."""
    with socket.create_connection(("127.0.0.1", stub.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_declared_100_mb_body_is_413_before_it_is_sent(shared_stub: StubProcess) -> None:
    before = _total(shared_stub)
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100 * 1024 * 1024}\r\n\r\n"
    ).encode()
    answer = _raw_http(shared_stub, head)  # not one byte of the body: the answer comes without it
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    _assert_still_serving(shared_stub, before)


def test_a_chunked_body_over_the_cap_is_413(shared_stub: StubProcess) -> None:
    before = _total(shared_stub)
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    # A chunk announced as 70 000 bytes, sent as far as just past the 64 KiB cap: the stub refuses it there.
    chunk = b'{"prompt": "' + b"a" * 70_000
    answer = _raw_http(shared_stub, head + f"{len(chunk):x}\r\n".encode() + chunk[: MAX_BODY_BYTES + 1024])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    _assert_still_serving(shared_stub, before)


@pytest.mark.parametrize("depth", [33, 5000, 30000])
def test_deeply_nested_json_is_400(shared_stub: StubProcess, depth: int) -> None:
    before = _total(shared_stub)
    raw = b'{"prompt": "a fox", "x": ' + b"[" * depth + b"]" * depth + b"}"
    response = _post_raw(shared_stub, "/v1/jobs", raw)
    assert response.status_code == 400, response.text
    assert "nested deeper than 32 levels" in response.json()["error"]["message"]
    claim = _post_raw(
        shared_stub, "/internal/buffer/jobs/claim", b'{"worker_id": "w1", "x": ' + raw + b"}", key=API_KEY
    )
    assert claim.status_code == 400
    _assert_still_serving(shared_stub, before)


def test_nesting_a_job_needs_is_fine(shared_stub: StubProcess) -> None:
    raw = b'{"prompt": "a fox", "x": ' + b"[" * 20 + b"]" * 20 + b"}"
    assert _post_raw(shared_stub, "/v1/jobs", raw).status_code == 201


def test_the_key_is_checked_before_the_body(shared_stub: StubProcess) -> None:
    raw = b"[" * 5000 + b"]" * 5000
    assert _post_raw(shared_stub, "/internal/buffer/jobs/claim", raw).status_code == 401


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_non_finite_numbers_are_422(shared_stub: StubProcess, number: str) -> None:
    before = _total(shared_stub)
    raw = f'{{"state": "idle", "progress": {number}}}'.encode()
    response = _post_raw(shared_stub, "/internal/buffer/workers/w1/heartbeat", raw, key=API_KEY)
    assert response.status_code == 422, response.text
    assert "progress" in response.text or "not a JSON number" in response.text
    _assert_still_serving(shared_stub, before)


@pytest.mark.parametrize(
    "query",
    [
        {"offset": "9223372036854775808"},
        {"offset": str(10**9 + 1)},
        {"offset": "-1"},
        {"limit": "99999999999999999999999"},
        {"limit": "0"},
        {"limit": "1e3"},
    ],
)
def test_query_integers_are_bounded(shared_stub: StubProcess, query: dict[str, str]) -> None:
    response = shared_stub.get("/v1/jobs", **query)
    assert response.status_code == 422, response.text
    assert list(query)[0] in json.dumps(response.json()["detail"])


def test_largest_offset_is_served(shared_stub: StubProcess) -> None:
    response = shared_stub.get("/v1/jobs", offset=str(10**9), limit="500")
    assert response.status_code == 200
    assert response.json()["jobs"] == []
