"""Issue 23, tried as an attacker would against a real stub process on loopback: a rented worker (it holds the
internal key), a web page the operator visits, a job submitter. Each test is one attack, and what it must not
achieve. Three stubs serve the module: `stub` (small limits, text logs), `locked` (STUB_PASSWORD) and
`dispatching` (`--dispatch-to` a hostile queue-mode worker); tests that fill a limit come last in their group.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from PIL import Image
from support.http_servers import ThreadedServer
from support.stubs import API_KEY, StubProcess, job_result, wait_for

PASSWORD = "hardening-pässword"
CHROMIUM = Path("/usr/bin/chromium")
LONE = "\\ud800"  # the JSON escape of a lone surrogate: valid JSON, not valid Unicode
LIMITS = {
    "MAX_QUEUED_JOBS": "30",
    "MAX_WORKERS": "40",
    "WORKER_RETENTION_S": "3",
    "UPLOAD_MAX_BYTES": "1000000",
    "UPLOAD_MAX_CONCURRENT": "2",
    "UPLOAD_TIMEOUT_S": "2",
    "UPLOAD_TOTAL_MAX_BYTES": "1500000",
    "UPLOAD_CLIENT_MAX_BYTES": "4000000",
    "LOG_FORMAT": "text",
    "STUB_PUBLIC_URL": "http://stub.example:8080",
    "STUB_ALLOWED_HOSTS": "studio.lan",
    "AUTH_FREE_FAILURES": "3",
    "AUTH_MAX_DELAY_S": "2",
}


def _start(folder: Path, *args: str, **env: str) -> StubProcess:
    folder.mkdir(parents=True, exist_ok=True)
    env = {"LOCAL_OUTPUT_DIR": str(folder / "outputs"), "UPLOAD_DIR": str(folder / "uploads"), **env}
    return StubProcess(db=folder / "stub.sqlite3", log_path=folder / "stub.log", env=env, args=list(args)).start()


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    process = _start(tmp_path_factory.mktemp("hardening"), **LIMITS)
    yield process
    process.kill()
    process.http.close()
    print(f"---- stub log ----\n{process.log_text()[-8000:]}")


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    process = _start(tmp_path_factory.mktemp("locked"), STUB_PASSWORD=PASSWORD, AUTH_FREE_FAILURES="3")
    process.http.auth = ("me", PASSWORD)
    yield process
    process.kill()
    process.http.close()


def rss(stub: StubProcess) -> int:
    assert stub.proc is not None
    return psutil.Process(stub.proc.pid).memory_info().rss


def raw_request(stub: StubProcess, head: str, body: bytes = b"", timeout_s: float = 10) -> bytes:
    """One request exactly as written (repeated headers and all), with `Connection: close`; the whole answer."""
    request = head.replace("\n", "\r\n").rstrip("\r\n") + f"\r\nContent-Length: {len(body)}\r\n"
    request += "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", stub.port), timeout=timeout_s) as sock:
        sock.sendall(request.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def claim_own(stub: StubProcess, worker_id: str, frames: int, **fields: Any) -> dict[str, Any]:
    """Submit a job of `frames` frames and claim it: only this job fits the claim's max_frames."""
    job_id = stub.submit(num_frames=frames)
    response = stub.claim(worker_id, capabilities={"max_frames": frames}, **fields)
    assert response.status_code == 200, response.text
    job = response.json()["job"]
    assert job["job_id"] == job_id
    return job


def assert_everything_reads(stub: StubProcess) -> None:
    for path in ("/v1/jobs?limit=500", "/v1/queue", "/v1/studio/changes", "/"):
        assert stub.http.get(path).status_code == 200, path


# ---- 1. one body, one reading ------------------------------------------------------------------------------


def test_a_report_with_two_content_types_is_400_and_nothing_breaks(stub: StubProcess) -> None:
    """The framework reads the first Content-Type, a middleware may read the last: refused before either."""
    job = claim_own(stub, "w-two-types", 9)
    job_id = job["job_id"]
    failed = f'{{"worker_id": "w-two-types", "status": "failed", "error": {{"code": "internal", "message": "{LONE}",'
    failed += ' "retryable": false}}'
    head = (
        f"POST /internal/buffer/jobs/{job_id}/status HTTP/1.1\nHost: 127.0.0.1\nX-Internal-Api-Key: {API_KEY}\n"
        "Content-Type: application/json\nContent-Type: text/plain"
    )
    answer = raw_request(stub, head, failed.encode())
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"content-type: sent more than once" in answer
    beat = f'{{"state": "busy", "job_id": "{job_id}", "gpu": {{"name": "{LONE}"}}}}'
    head = (
        f"POST /internal/buffer/workers/w-two-types/heartbeat HTTP/1.1\nHost: 127.0.0.1\n"
        f"X-Internal-Api-Key: {API_KEY}\nContent-Type: application/json\nContent-Type: text/plain"
    )
    assert raw_request(stub, head, beat.encode()).startswith(b"HTTP/1.1 400")
    # One type only, but not JSON's: the body is checked all the same (the framework may parse it as JSON).
    plain = stub.http.post(
        f"/internal/buffer/jobs/{job_id}/status",
        content=failed.encode(),
        headers={"X-Internal-Api-Key": API_KEY, "Content-Type": "text/plain"},
    )
    assert plain.status_code == 422 and "not valid Unicode" in plain.text
    assert stub.job(job_id)["status"] == "claimed" and stub.job(job_id)["error"] is None
    assert_everything_reads(stub)
    for head in ("Host: 127.0.0.1\nHost: evil.example", "Host: 127.0.0.1\nContent-Encoding: gzip"):
        answer = raw_request(stub, f"POST /v1/jobs HTTP/1.1\n{head}\nContent-Type: application/json", b"{}")
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 415")), answer[:200]
    stub.post(f"/v1/jobs/{job_id}/cancel", key=None)


# ---- 2. a holder proves it holds ---------------------------------------------------------------------------


def test_a_forged_completion_is_refused_and_the_holders_result_stands(stub: StubProcess) -> None:
    job = claim_own(stub, "real-worker", 13, wants_attempt_secret=True)
    job_id, secret = job["job_id"], job["attempt_secret"]
    assert len(secret) >= 32 and job["attempt"] == 1
    # The attacker (another rented worker: the same key) learns the holder and the attempt from the public view.
    view = stub.job(job_id)
    holder, attempt = view["worker_id"], view["attempts"]
    assert (holder, attempt) == ("real-worker", 1)
    forged = job_result(job_id, "f" * 64)
    for fields in ({}, {"attempt_secret": "guessed"}, {"attempt_secret": secret[:-1] + "x"}):
        for status, extra in (
            ("completed", {"result": forged}),
            ("failed", {"error": {"code": "internal", "message": "forged", "retryable": False}}),
        ):
            answer = stub.status(job_id, holder, status, attempt=attempt, **extra, **fields)
            assert answer.status_code == 403, answer.text
    beat = stub.post(f"/internal/buffer/workers/{holder}/heartbeat", {"state": "busy", "job_ids": [job_id]})
    assert beat.status_code == 403
    assert stub.job(job_id)["status"] == "claimed", "nothing forged changed the job"
    # The real worker, with its secret: its beat renews the lease, its result is the one stored.
    real_beat = {"state": "busy", "job_ids": [job_id], "attempt_secrets": {job_id: secret}}
    assert stub.post(f"/internal/buffer/workers/{holder}/heartbeat", real_beat).json() == {"cancel_job_ids": []}
    real = job_result(job_id, "e" * 64)
    answer = stub.status(job_id, holder, "completed", attempt=attempt, attempt_secret=secret, result=real)
    assert answer.status_code == 200, answer.text
    # A forged report after it is no "duplicate": still refused, and the result stands.
    assert stub.status(job_id, holder, "completed", attempt=attempt, result=forged).status_code == 403
    assert (
        stub.status(job_id, holder, "completed", attempt=attempt, attempt_secret=secret, result=real).status_code == 200
    )
    final = stub.job(job_id)
    assert final["status"] == "completed" and final["result"]["sha256"] == "e" * 64
    # The public views show who held it, never the secret; the log never has it either.
    for path in (f"/v1/jobs/{job_id}", "/v1/jobs", "/v1/studio/changes", "/v1/queue"):
        assert secret not in stub.http.get(path).text, path
    assert secret not in stub.log_text()


def test_a_v11_worker_without_a_secret_still_works(stub: StubProcess) -> None:
    """Backwards compatible: a claim that does not ask for a secret gets none, and v1.1 reports count."""
    response = stub.claim("v11-worker", capabilities={"max_frames": 17})
    assert response.status_code == 204
    job_id = stub.submit(num_frames=17)
    job = stub.claim("v11-worker", capabilities={"max_frames": 17}).json()["job"]
    assert job["job_id"] == job_id and "attempt_secret" not in job
    assert stub.heartbeat("v11-worker", job_id).status_code == 200
    assert stub.status(job_id, "v11-worker", "running", attempt=1).status_code == 200
    # What a worker writes for everyone to read is kept short: a 30 000-character progress message is cut.
    progress = {"worker_id": "v11-worker", "stage": "denoising", "progress": 0.5, "message": "m" * 30_000}
    assert stub.post(f"/internal/videogen/jobs/{job_id}/progress", progress).status_code == 204
    assert len(stub.job(job_id)["message"]) <= 2000
    assert stub.status(job_id, "v11-worker", "completed", attempt=1).status_code == 200
    assert stub.job(job_id)["status"] == "completed"


# ---- 3. results are checked; the video route goes nowhere else ---------------------------------------------


def test_the_video_route_never_redirects_off_the_allowed_origins(stub: StubProcess) -> None:
    """A worker's https URL elsewhere is refused when reported; one already stored (an older stub let it in)
    is not followed either."""
    job = claim_own(stub, "w-redirect", 21, wants_attempt_secret=True)
    job_id, secret = job["job_id"], job["attempt_secret"]
    evil = f"https://evil.example/videos/{job_id}/{'a' * 64}.mp4"
    result = job_result(job_id, "a" * 64) | {"video_url": evil}
    answer = stub.status(job_id, "w-redirect", "completed", attempt=1, attempt_secret=secret, result=result)
    assert answer.status_code == 422 and "not an allowed storage origin" in answer.text
    assert stub.job(job_id)["status"] == "queued" and stub.job(job_id)["result"] is None
    # Plant the URL as a stub before this change stored it: straight into the database.
    with sqlite3.connect(stub.db, timeout=10) as db:
        db.execute("UPDATE jobs SET status = 'completed', result = ? WHERE job_id = ?", (json.dumps(result), job_id))
    response = stub.http.get(f"/v1/jobs/{job_id}/video", follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers
    # The page's player and download link use the stub's own route only, and its CSP allows no other media.
    script = stub.http.get("/static/studio.js").text
    assert "result.video_url" not in script
    csp = stub.http.get("/").headers["content-security-policy"]
    assert "media-src 'self' https://*.backblazeb2.com;" in csp and "https:;" not in csp


# ---- 4. bounded worker rows and page polls -----------------------------------------------------------------


def test_an_id_flood_keeps_worker_rows_and_page_polls_small(stub: StubProcess) -> None:
    big = "G" * 2000
    with httpx.Client(base_url=stub.url, headers={"X-Internal-Api-Key": API_KEY}, timeout=10) as http:
        for n in range(120):
            body = {"gpu_class": big, "state": "idle", "gpu": {"name": big, "memory_total_mb": 1}}
            assert http.post(f"/internal/buffer/workers/made-up-{n}/heartbeat", json=body).status_code == 200
    queue = stub.get("/v1/queue").json()
    assert queue["workers_total"] <= 40 and len(queue["workers"]) <= 40
    poll = stub.http.get("/v1/studio/changes", params={"since": time.time() - 1})
    assert len(poll.content) < 40_000, len(poll.content)
    shown = poll.json()["workers"][0]
    assert len(shown["gpu_class"]) <= 64 and len(shown["gpu"]["name"]) <= 128
    # Unheard of for WORKER_RETENTION_S (3 s): gone, without any new worker to push them out.
    wait_for(lambda: stub.get("/v1/queue").json()["workers_total"] == 0, 8, 0.2, "stale workers to be pruned")


def test_a_poll_after_many_big_changes_is_cut_and_continued(stub: StubProcess) -> None:
    since = time.time() - 0.01
    prompt = "🦊" * 3999  # four bytes each as stored, not a 12-character escape
    ids = [stub.submit(prompt, negative_prompt=prompt, num_frames=25) for _ in range(20)]
    seen: list[str] = []
    cursor, after, polls = since, None, 0
    while True:
        params: dict[str, Any] = {"since": cursor} | ({"after": after} if after is not None else {})
        answer = stub.http.get("/v1/studio/changes", params=params)
        assert len(answer.content) < 600 * 1024
        data = answer.json()
        seen += [job["job_id"] for job in data["jobs"]]
        polls += 1
        if not data["more"]:
            break
        cursor, after = data["cursor"], data["after"]
    assert set(ids) <= set(seen) and polls >= 2, "cut into pages, none left out"
    with sqlite3.connect(stub.db, timeout=10) as db:
        (size,) = db.execute("SELECT length(CAST(input AS BLOB)) FROM jobs WHERE job_id = ?", (ids[0],)).fetchone()
    assert size < 2 * 3999 * 4 + 300, size
    for job_id in ids:
        stub.post(f"/v1/jobs/{job_id}/cancel", key=None)


# ---- 6. DNS rebinding --------------------------------------------------------------------------------------


def test_a_foreign_host_name_gets_nothing(stub: StubProcess) -> None:
    with httpx.Client(base_url=stub.url, timeout=10) as http:
        for path in ("/", "/v1/jobs", "/v1/queue", "/v1/studio/changes", "/static/studio.js", "/openapi.json"):
            response = http.get(path, headers={"Host": f"rebound.example:{stub.port}"})
            assert response.status_code == 421, path
            assert "job_id" not in response.text
        assert http.post("/v1/jobs", json={"prompt": "x"}, headers={"Host": "rebound.example"}).status_code == 421
        for host in (f"localhost:{stub.port}", f"[::1]:{stub.port}", "stub.example:8080", "studio.lan", "x.localhost"):
            assert http.get("/v1/jobs", headers={"Host": host}).status_code == 200, host
        # Workers may come through any name (their key is the check); /health is for probes.
        claim = http.post(
            "/internal/buffer/jobs/claim",
            json={"worker_id": "tunnelled", "capabilities": {"max_frames": 5}},
            headers={"Host": "tunnel.example", "X-Internal-Api-Key": API_KEY},
        )
        assert claim.status_code == 204
        assert http.get("/health", headers={"Host": "anything"}).status_code == 200
    assert stub.get("/docs").status_code == 404 and stub.get("/redoc").status_code == 404, "no CDN scripts"


# ---- 7. cross-site requests --------------------------------------------------------------------------------


class AttackerSite(ThreadedServer):
    """Serves one HTML page from another loopback origin (localhost, another port)."""

    def __init__(self, html: str) -> None:
        self.html = html.encode()
        super().__init__()

    @property
    def url(self) -> str:
        return super().url.replace("127.0.0.1", "localhost")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(site.html)))
                self.end_headers()
                self.wfile.write(site.html)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def attack_page(target: str, job_id: str) -> str:
    """A form POST to cancel (navigates), a no-cors fetch to cancel, and a no-cors upload."""
    return f"""<!doctype html><body>
<form id="f" method="POST" action="{target}/v1/jobs/{job_id}/cancel" enctype="text/plain">
<input name="x" value="y"></form>
<script>
fetch("{target}/v1/jobs/{job_id}/cancel", {{method: "POST", mode: "no-cors"}});
fetch("{target}/v1/uploads", {{method: "POST", mode: "no-cors", body: new Blob([new Uint8Array([137, 80, 78, 71])])}});
setTimeout(() => document.getElementById("f").submit(), 300);
</script></body>"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


def _cross_site_cancel(browser: Any, target: StubProcess, credentials: dict[str, str] | None) -> None:
    job_id = target.submit(num_frames=29)
    uploads_before = len(list((target.db.parent / "uploads").glob("*.png")))
    context = browser.new_context(http_credentials=credentials)
    try:
        page = context.new_page()
        if credentials:  # the operator has the studio open: the browser holds the Basic credentials
            assert page.goto(target.url + "/").status == 200
        with AttackerSite(attack_page(target.url, job_id)) as site:
            page.goto(site.url + "/")
            page.wait_for_url(re.compile(r".*/cancel$"), timeout=10_000)  # the form's POST was answered
            time.sleep(0.5)  # the no-cors fetches too
    finally:
        context.close()
    view = target.job(job_id)
    assert view["status"] == "queued" and view["cancel_requested"] is False, view
    assert len(list((target.db.parent / "uploads").glob("*.png"))) == uploads_before
    assert target.log_text().count("browser request refused") >= 2
    # The stub's own page, same origin, still cancels.
    assert target.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 200


def test_cross_site_cancel_is_refused_without_a_password(chromium: Any, stub: StubProcess) -> None:
    _cross_site_cancel(chromium, stub, None)


def test_cross_site_cancel_is_refused_with_cached_basic_credentials(chromium: Any, locked: StubProcess) -> None:
    _cross_site_cancel(chromium, locked, {"username": "me", "password": PASSWORD})


def test_forms_and_untyped_bodies_are_refused_scripts_pass(stub: StubProcess) -> None:
    job_id = stub.submit(num_frames=33)
    other_site = {"Origin": "http://localhost:1", "Content-Type": "application/json"}
    assert stub.http.post(f"/v1/jobs/{job_id}/cancel", headers=other_site).status_code == 403
    assert stub.http.post(f"/v1/jobs/{job_id}/cancel", headers={"Sec-Fetch-Site": "same-site"}).status_code == 403
    form = stub.http.post("/v1/jobs", content=b'{"prompt": "x"}', headers={"Content-Type": "text/plain"})
    assert form.status_code == 415 and "application/json" in form.text
    assert stub.http.post("/v1/jobs", content=b'{"prompt": "x"}').status_code == 415
    own = {"Origin": stub.url, "Sec-Fetch-Site": "same-origin"}
    assert stub.http.post(f"/v1/jobs/{job_id}/cancel", headers=own).status_code == 200


# ---- 8. floods: uploads and jobs ---------------------------------------------------------------------------


def noise_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_are_decoded_whole_and_trailing_bytes_refused(stub: StubProcess) -> None:
    good = noise_png(20)
    assert stub.http.post("/v1/uploads", content=good).status_code == 201
    junk = stub.http.post("/v1/uploads", content=good + b"<script>alert(1)</script>")
    assert junk.status_code == 422 and "follow the end of the PNG" in junk.text
    truncated = stub.http.post("/v1/uploads", content=good[: len(good) // 2] + good[-12:])
    assert truncated.status_code == 422


def test_stalled_uploads_are_cut_off_and_memory_stays_flat(stub: StubProcess) -> None:
    before = rss(stub)
    socks, answers = [], []
    head = b"POST /v1/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 900000\r\n\r\n"
    try:
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", stub.port), timeout=10)
            sock.sendall(head + os.urandom(800_000))  # most of the body, then nothing more
            socks.append(sock)
            time.sleep(0.05)
        start = time.monotonic()
        for sock in socks:
            data = b""
            while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
            answers.append((data.split(b"\r\n", 1)[0], time.monotonic() - start))
    finally:
        for sock in socks:
            sock.close()
    codes = sorted(line.split()[1] for line, _ in answers)
    assert codes.count(b"408") == 2 and codes.count(b"429") == 6, answers
    assert max(t for _, t in answers) < 6, "a stalled body is cut off after UPLOAD_TIMEOUT_S"
    assert rss(stub) - before < 30 * 1024 * 1024
    wait_for(lambda: not list((stub.db.parent / "uploads" / ".incoming").iterdir()), 5, what="bodies removed")


def test_upload_total_and_client_quotas_are_429(stub: StubProcess) -> None:
    folder = stub.db.parent / "uploads"
    answers = [stub.http.post("/v1/uploads", content=noise_png(260)) for _ in range(8)]
    codes = [a.status_code for a in answers]
    assert 201 in codes and codes[-1] == 429, codes
    assert "UPLOAD_TOTAL_MAX_BYTES" in answers[-1].text and answers[-1].headers["retry-after"]
    assert sum(p.stat().st_size for p in folder.glob("*.png")) <= 1_500_000
    # The same image again stores nothing, but its bytes count against this client's quota (4 MB a window).
    same = next(a for a in answers if a.status_code == 201)
    data = (folder / same.json()["name"]).read_bytes()
    answers = [stub.http.post("/v1/uploads", content=data) for _ in range(20)]
    assert answers[-1].status_code == 429 and "UPLOAD_CLIENT_MAX_BYTES" in answers[-1].text


def test_a_job_flood_stops_at_the_queue_cap_with_disk_and_memory_bounded(stub: StubProcess) -> None:
    before_rss = rss(stub)
    queued = stub.get("/v1/jobs", status="queued").json()["total"]
    prompt = "🌊" * 4000
    answers = [stub.post("/v1/jobs", {"prompt": prompt, "negative_prompt": prompt}, key=None) for _ in range(40)]
    codes = [a.status_code for a in answers]
    assert codes.count(201) == 30 - queued and codes[-1] == 429, codes
    error = answers[-1].json()["error"]
    assert error["code"] == "queue_full" and "MAX_QUEUED_JOBS" in error["message"]
    files = [stub.db, stub.db.with_name(stub.db.name + "-wal")]
    assert sum(f.stat().st_size for f in files if f.exists()) < 8 * 1024 * 1024
    assert rss(stub) - before_rss < 30 * 1024 * 1024


# ---- 9. guessing, logs ---------------------------------------------------------------------------------------


def test_a_request_path_cannot_forge_a_text_log_line(stub: StubProcess) -> None:
    """Text logs (LOG_FORMAT=text) escape what comes from requests, as JSON lines do: a refused call's path with
    a newline and a terminal escape code stays on its own line, escaped."""
    forged = "12:00:00\tERROR\torchestrator_stub:\tall\tjobs\tdeleted"
    for path in (
        "/internal/x%0A" + forged.replace("\t", "%09") + "%1B%5B2J",
        "/v1/x%0D%0A" + forged.replace("\t", "%09"),
    ):
        assert stub.http.post(path, headers={"Host": "rebound.example"}).status_code in (401, 421)
    wait_for(lambda: stub.log_text().count("x\\n12:00:00") + stub.log_text().count("x\\r\\n12:00:00") >= 2, 5)
    lines = stub.log_text().splitlines()
    assert not [line for line in lines if line.startswith("12:00:00")]
    assert "\x1b" not in stub.log_text() and "\r" not in stub.log_text()


def test_a_stale_key_is_not_a_guess_but_many_keys_are_slowed(stub: StubProcess, locked: StubProcess) -> None:
    # A worker with an old key, repeating it: 401 every time, and the right key from the same address works.
    for _ in range(10):
        assert stub.post("/internal/buffer/jobs/claim", {"worker_id": "stale"}, key="old-key").status_code == 401
    assert (
        stub.post("/internal/buffer/jobs/claim", {"worker_id": "ok", "capabilities": {"max_frames": 5}}).status_code
        == 204
    )
    # Distinct guesses: three free, then locked out for a doubling time, the right password included.
    start, codes = time.monotonic(), []
    with httpx.Client(base_url=locked.url, timeout=10) as http:
        for n in range(30):
            codes.append(http.get("/v1/jobs", auth=("x", f"guess-{n}")).status_code)
        locked_out = http.get("/v1/jobs", auth=("x", PASSWORD))
        assert locked_out.status_code == 429 and int(locked_out.headers["retry-after"]) >= 1
        assert http.get("/v1/jobs", auth=("x", "guess-0")).status_code == 401, "a known wrong one is no guess"
        elapsed = time.monotonic() - start
        assert codes[:4] == [401] * 4 and codes.count(401) <= 5, codes
        wait_for(lambda: http.get("/v1/jobs", auth=("x", PASSWORD)).status_code == 200, 5, 0.25, "the lock to end")
    assert elapsed < 5, "refusals are immediate: the guesser waits, not the stub"
    keys = [locked.post("/internal/buffer/jobs/claim", {"worker_id": "g"}, key=f"k{n}").status_code for n in range(8)]
    assert keys[:3] == [401] * 3 and keys[-1] == 429, keys


# ---- 5. the dispatcher's answers ---------------------------------------------------------------------------


class HostileQueueWorker(ThreadedServer):
    """A queue-mode worker behind DISPATCH_TO that answers by the prompt: a 1.5 GB body, a lone surrogate, an
    integer past 2^53, or a proper result."""

    def __init__(self) -> None:
        self.sent_bytes = 0
        super().__init__()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                job_id, prompt = body["job_id"], body["prompt"]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if prompt == "huge":
                    self.send_header("Content-Length", str(1_500_000_000))
                    self.end_headers()
                    chunk = b" " * 65536
                    try:
                        while server.sent_bytes < 300_000_000:  # bounded: the stub stops reading long before
                            self.wfile.write(chunk)
                            server.sent_bytes += len(chunk)
                    except OSError:
                        return
                    return
                result = job_result(job_id, hashlib.sha256(prompt.encode()).hexdigest())
                text = json.dumps(result)
                if prompt == "surrogate":
                    text = text.replace('"t2v"', f'"t2v", "extra": "{LONE}"').replace("file:///", f"file:///{LONE}")
                elif prompt == "bigint":
                    text = text.replace('"bytes": 1234', f'"bytes": {2**60}')
                data = text.encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def dispatching(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StubProcess, HostileQueueWorker]]:
    with HostileQueueWorker() as worker:
        process = _start(tmp_path_factory.mktemp("dispatching"), "--dispatch-to", worker.url + "/generate")
        yield process, worker
        process.kill()
        process.http.close()


def test_the_dispatchers_huge_and_malformed_answers_fail_their_jobs_only(
    dispatching: tuple[StubProcess, HostileQueueWorker],
) -> None:
    stub, worker = dispatching
    before = rss(stub)
    peak = [before]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss(stub))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        jobs = {prompt: stub.submit(prompt) for prompt in ("huge", "surrogate", "bigint", "fine")}
        views = {p: _final(stub, job_id) for p, job_id in jobs.items()}
    finally:
        stop.set()
        watcher.join()
    assert views["fine"]["status"] == "completed"
    for prompt in ("huge", "surrogate", "bigint"):
        view = views[prompt]
        assert view["status"] == "failed" and view["result"] is None, view
    assert "larger than 65536 bytes" in views["huge"]["error"]["message"]
    assert "not valid Unicode" in views["surrogate"]["error"]["message"]
    assert "result.bytes" in views["bigint"]["error"]["message"]
    assert worker.sent_bytes < 50_000_000, "the stub stopped reading"
    assert peak[0] - before < 40 * 1024 * 1024, (before, peak[0])
    assert_everything_reads(stub)


def _final(stub: StubProcess, job_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: (view := stub.job(job_id))["status"] in ("completed", "failed") and view, 30, 0.1, f"{job_id} final"
    )
