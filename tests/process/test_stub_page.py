"""The stub's page routes against a real stub process: the page, STUB_PASSWORD, uploads, videos, live changes.

The browser itself is driven in test_studio_browser.py; this file holds the HTTP contract under it.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image
from support.stubs import StubProcess, job_result

from worker_app_fastwan.core.schema import JobInput

PASSWORD = "s3cret-pässword"
UPLOAD_MAX = 200_000  # above the stub's 64 KiB cap on other bodies


@pytest.fixture(scope="module")
def page_stub(module_stubs: Callable[..., StubProcess], tmp_path_factory: pytest.TempPathFactory) -> StubProcess:
    """One stub for every test here that needs no settings of its own (a start costs about 2 s)."""
    root = tmp_path_factory.mktemp("page")
    (root / "outputs" / "videos").mkdir(parents=True)
    return module_stubs(
        LOCAL_OUTPUT_DIR=root / "outputs",
        UPLOAD_DIR=root / "up",
        UPLOAD_MAX_BYTES=UPLOAD_MAX,
        STUB_PUBLIC_URL="http://stub.internal:8080/",
    )


def root_of(stub: StubProcess) -> Path:
    """The folder of the page stub's uploads and outputs."""
    return Path(stub.env["UPLOAD_DIR"]).parent


def png(size: tuple[int, int] = (40, 24), mode: str = "RGB", noise: bool = False) -> bytes:
    buf = io.BytesIO()
    img = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)) if noise else Image.new(mode, size)
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_the_page_and_its_assets_are_served_by_the_stub(page_stub: StubProcess) -> None:
    page = page_stub.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<form id="job-form"' in page.text
    # Every script and stylesheet the page names comes from this origin and is actually served.
    for asset in ("/static/studio.js", "/static/studio.css"):
        assert f'"{asset}"' in page.text
        assert page_stub.get(asset).status_code == 200
    assert "http" not in page.text.split("<body>")[0]  # nothing fetched from elsewhere


def test_form_limits_are_the_apis_own(page_stub: StubProcess) -> None:
    fields = page_stub.get("/v1/studio/form").json()
    model = JobInput.model_fields
    assert fields["width"]["default"] == model["width"].default
    assert fields["num_frames"]["default"] == model["num_frames"].default
    assert (fields["width"]["min"], fields["width"]["max"], fields["width"]["step"]) == (128, 1280, 32)
    assert fields["num_frames"]["step"] == 4
    steps = fields["num_inference_steps"]
    for value, ok in ((steps["min"], True), (steps["max"], True), (steps["max"] + 1, False)):
        response = page_stub.post("/v1/jobs", {"prompt": "x", "num_inference_steps": value}, key=None)
        assert (response.status_code == 201) is ok, response.text


# ---- STUB_PASSWORD ---------------------------------------------------------------------------------


def test_password_protects_the_page_and_v1_only(stub_factory) -> None:  # noqa: F811 (the fixture)
    stub = stub_factory(STUB_PASSWORD=PASSWORD)
    http = httpx.Client(base_url=stub.url, timeout=10)
    for path in ("/", "/v1/jobs", "/v1/queue", "/v1/studio/changes", "/static/studio.js", "/openapi.json"):
        for auth in (None, ("anyone", "wrong"), ("anyone", PASSWORD[:-1])):
            response = http.get(path, auth=auth)
            assert response.status_code == 401, (path, auth)
            assert response.headers["www-authenticate"].startswith("Basic ")
            assert PASSWORD not in response.text
        assert http.get(path, auth=("any-name", PASSWORD)).status_code == 200
        assert http.get(path, auth=("", PASSWORD)).status_code == 200
    # A browser that cancelled the password prompt is told what to do.
    page = http.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 401 and "STUB_PASSWORD" in page.text and "<h1>" in page.text
    # Malformed headers are a plain 401, never a 5xx.
    for header in ("Basic !!!", "Basic " + "Zm9v", "Bearer x", "Basic"):
        assert http.get("/v1/jobs", headers={"Authorization": header}).status_code == 401
    # Submitting without it creates nothing.
    assert http.post("/v1/jobs", json={"prompt": "x"}).status_code == 401
    assert http.get("/v1/jobs", auth=("u", PASSWORD)).json()["total"] == 0
    # Outside it: /health, the worker-facing routes (their own key) and /uploads/.
    assert http.get("/health").status_code == 200
    assert stub.claim("w1").status_code == 204
    wrong_key = stub.post("/internal/buffer/jobs/claim", {"worker_id": "w1"}, key="wrong", auth=("u", PASSWORD))
    assert wrong_key.status_code == 401 and "X-Internal-Api-Key" in wrong_key.text
    upload = http.post("/v1/uploads", content=png(), auth=("u", PASSWORD))
    assert upload.status_code == 201
    # Without STUB_PUBLIC_URL the upload's URL is this stub's own loopback address.
    assert upload.json()["url"].startswith(f"http://127.0.0.1:{stub.port}/uploads/")
    assert http.get(f"/uploads/{upload.json()['name']}").status_code == 200
    assert PASSWORD not in stub.log_text()


def test_without_a_password_nothing_asks_for_one(page_stub: StubProcess) -> None:
    assert page_stub.get("/v1/jobs").status_code == 200
    assert page_stub.get("/").status_code == 200


# ---- uploads ---------------------------------------------------------------------------------------


def test_an_upload_is_stored_by_content_and_served_back(page_stub: StubProcess) -> None:
    data = png((200, 150), noise=True)
    assert 64 * 1024 < len(data) < UPLOAD_MAX  # more than any JSON body may be
    response = page_stub.http.post("/v1/uploads", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 201, response.text
    body = response.json()
    name = f"{hashlib.sha256(data).hexdigest()}.png"
    assert body == {
        "name": name,
        "bytes": len(data),
        "format": "png",
        "width": 200,
        "height": 150,
        "url": f"http://stub.internal:8080/uploads/{name}",
    }
    assert (root_of(page_stub) / "up" / name).read_bytes() == data
    served = page_stub.get(f"/uploads/{name}")
    assert served.content == data and served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    # The job the page then submits is accepted with that URL.
    assert page_stub.submit(image_url=body["url"])


BAD_UPLOADS = [
    (b"<html><script>alert(1)</script></html>", "image/png", 422, "not a PNG, JPEG or WebP"),
    (b"GIF89a" + b"\0" * 40, "image/gif", 422, "not a PNG, JPEG or WebP"),
    (png()[:40], "image/png", 422, "not a PNG, JPEG or WebP"),
    (b"", "image/png", 422, "empty"),
    (b"\x89PNG" + b"x" * 300_000, "image/png", 413, f"larger than the {UPLOAD_MAX}-byte limit"),
    (png((5000, 4000), mode="1"), "image/png", 422, "more than 16777216 pixels"),
]


def test_bad_uploads_are_refused_and_not_stored(page_stub: StubProcess) -> None:
    before = set((root_of(page_stub) / "up").glob("*"))
    for body, content_type, status, message in BAD_UPLOADS:
        response = page_stub.http.post("/v1/uploads", content=body, headers={"Content-Type": content_type})
        assert response.status_code == status, (body[:20], response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_input" and error["message"].startswith("image: ")
        assert message in error["message"], error

    def chunks():  # no Content-Length: the stub stops reading past the cap instead of buffering it all
        for _ in range(400):
            yield b"\x89PNG" + b"x" * 1020

    assert page_stub.http.post("/v1/uploads", content=chunks()).status_code == 413
    assert set((root_of(page_stub) / "up").glob("*")) == before
    for name in ("../stub0.sqlite3", "x.png", f"{'a' * 64}.gif", f"{'a' * 64}.png"):
        assert page_stub.get(f"/uploads/{name}").status_code in (404, 422), name


# ---- videos ----------------------------------------------------------------------------------------


def finish(stub: StubProcess, data: bytes = b"", **result_fields: object) -> str:
    """A job completed by worker w1 with the protocol's result for a video of content `data`, `result_fields`
    replacing some of it."""
    stub.submit()
    job_id = stub.claim_job("w1")["job_id"]  # the oldest queued job: which one does not matter here
    # Local storage: a file:// URL (a path on the worker's side, which the stub does not use).
    result = job_result(job_id, hashlib.sha256(data).hexdigest()) | result_fields
    response = stub.status(job_id, "w1", "completed", result=result)
    assert response.status_code == 200, response.text
    return job_id


def video_file(out: Path, job_id: str, data: bytes) -> Path:
    """Where a local-storage worker writes the video: `videos/<job_id>/<sha256>.mp4` under its output folder."""
    path = out / "videos" / job_id / f"{hashlib.sha256(data).hexdigest()}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def video_stub(page_stub: StubProcess) -> tuple[StubProcess, Path]:
    return page_stub, root_of(page_stub) / "outputs"


def test_a_local_video_is_served_with_ranges(video_stub) -> None:
    stub, out = video_stub
    data = os.urandom(100_000)
    job_id = finish(stub, data)
    video_file(out, job_id, data).write_bytes(data)
    full = stub.get(f"/v1/jobs/{job_id}/video")
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-type"] == "video/mp4" and full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-disposition"].startswith("inline")
    part = stub.http.get(f"/v1/jobs/{job_id}/video", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = stub.http.get(f"/v1/jobs/{job_id}/video", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    beyond = stub.http.get(f"/v1/jobs/{job_id}/video", headers={"Range": "bytes=200000-"})
    assert beyond.status_code == 416
    download = stub.get(f"/v1/jobs/{job_id}/video", download="true")
    assert download.headers["content-disposition"] == f'attachment; filename="{job_id}.mp4"'


def test_the_video_path_comes_from_the_results_storage_key(video_stub) -> None:
    """The `videos/<job_id>/<sha256>.mp4` layout: the file the result names, nothing guessed."""
    stub, out = video_stub
    data = b"\x00\x00\x00\x18ftypmp42" + os.urandom(100)
    job_id = finish(stub, data)
    video_file(out, job_id, data).write_bytes(data)
    (out / "videos" / job_id / f"{'1' * 64}.mp4").write_bytes(b"not this one (another attempt's)")
    assert stub.get(f"/v1/jobs/{job_id}/video").content == data


def test_a_result_naming_another_object_is_refused(video_stub) -> None:
    """A storage_key must be this job's own object, and the URL must point at it, on an allowed origin; the
    numbers within the protocol's bounds: else 422, nothing stored, and the attempt ends as a retryable failure
    (another worker may store the video properly)."""
    stub, _ = video_stub
    sha, other = "a" * 64, "another-job"
    bad = {
        "storage_key": [
            "../secret.txt",
            "videos/../../secret.txt",
            "/etc/passwd",
            "",
            f"videos/{other}/{sha}.mp4",
            "videos/{job}/" + "b" * 64 + ".mp4",
            "x/videos/{job}/" + sha + ".mp4",
            "x" * 5000,
        ],
        "video_url": [
            f"file:///elsewhere/{other}.mp4",
            "https://evil.example/videos/{job}/" + sha + ".mp4",
            "javascript:alert(1)",
            f"https://f000.backblazeb2.com/file/b/videos/{other}/{sha}.mp4",
            "https://user:pw@f000.backblazeb2.com/file/b/videos/{job}/" + sha + ".mp4",
        ],
        "job_id": [other],
        "sha256": ["A" * 64, "zz"],
        "bytes": [2**53, -1],
        "width": [10**6],
        "seed": [2**63],
        "timings": [{"total_s": 1e300}],
    }
    for field, values in bad.items():
        for value in values:
            stub.submit(num_frames=5)  # only this test's jobs are this short: the claim below takes this one
            claimed = stub.claim("w1", capabilities={"max_frames": 5})
            job_id = claimed.json()["job"]["job_id"]
            value = value.replace("{job}", job_id) if isinstance(value, str) else value
            result = job_result(job_id, sha) | {field: value}
            response = stub.status(job_id, "w1", "completed", result=result)
            assert response.status_code == 422, (field, value, response.text)
            assert f"result.{field}" in response.json()["detail"], response.text
            view = stub.job(job_id)
            assert view["status"] == "queued" and view["result"] is None, (field, value)
            assert "refused" in view["last_error"]["message"]
            assert stub.post(f"/v1/jobs/{job_id}/cancel", key=None).status_code == 200


def test_nothing_outside_local_output_dir_is_served(video_stub) -> None:
    """Even a result of the right shape: its file must be a file inside LOCAL_OUTPUT_DIR (no symlink out)."""
    stub, out = video_stub
    secret = out.parent / "secret.txt"  # beside LOCAL_OUTPUT_DIR
    secret.write_text("secret")
    job_id = finish(stub, b"link")
    video_file(out, job_id, b"link").symlink_to(secret)
    loop_id = finish(stub, b"loop")
    loop = video_file(out, loop_id, b"loop")
    loop.symlink_to(loop)
    for job in (job_id, loop_id):
        response = stub.get(f"/v1/jobs/{job}/video")
        assert response.status_code == 404 and "secret" not in response.text
        assert str(out) not in response.text


def test_a_b2_video_redirects_to_its_storage_only(video_stub) -> None:
    stub, _ = video_stub
    sha = hashlib.sha256(b"b2").hexdigest()
    stub.submit()
    job_id = stub.claim_job("w1")["job_id"]
    url = f"https://f000.backblazeb2.com/file/bucket/videos/{job_id}/{sha}.mp4?Authorization=abc"
    result = job_result(job_id, sha) | {"video_url": url}
    assert stub.status(job_id, "w1", "completed", result=result).status_code == 200
    response = stub.get(f"/v1/jobs/{job_id}/video")
    assert response.status_code == 307 and response.headers["location"] == url
    queued = stub.submit()
    assert stub.get(f"/v1/jobs/{queued}/video").status_code == 404
    assert stub.get("/v1/jobs/nope/video").status_code == 404
    stub.post(f"/v1/jobs/{queued}/cancel", key=None)


# ---- live changes ----------------------------------------------------------------------------------


def test_changes_send_only_what_changed_since_the_cursor(page_stub: StubProcess) -> None:
    ids = [page_stub.submit(f"job {n}") for n in range(3)]
    first = page_stub.get("/v1/studio/changes").json()
    assert set(ids) <= {job["job_id"] for job in first["jobs"]}
    assert first["counts"]["queued"] >= 3
    # The cursor lags by the overlap window: right away the same jobs come again (the page skips them) ...
    time.sleep(0.05)
    claimed = page_stub.claim_job("w-changes")["job_id"]
    again = page_stub.get("/v1/studio/changes", since=first["cursor"]).json()
    assert [job["worker_id"] for job in again["jobs"] if job["job_id"] == claimed] == ["w-changes"]
    # ... but a cursor past a job's last change leaves it out.
    time.sleep(0.3)
    later = page_stub.get("/v1/studio/changes", since=time.time() - 0.1).json()
    assert later["jobs"] == []
    for bad in ("-1", "nan", "inf", "1e400", "x", "1" * 400):
        assert page_stub.get("/v1/studio/changes", since=bad).status_code == 422, bad
    assert page_stub.get("/v1/studio/changes", limit=1001).status_code == 422


def test_changes_show_workers_and_which_went_quiet(page_stub: StubProcess) -> None:
    assert page_stub.heartbeat("gpu-box-1", state="idle").status_code == 200
    workers = page_stub.get("/v1/studio/changes").json()["workers"]
    (worker,) = [w for w in workers if w["worker_id"] == "gpu-box-1"]
    assert worker["worker_id"] == "gpu-box-1" and worker["state"] == "idle"
    assert worker["gpu"]["name"] == "Test GPU" and worker["gpu"]["memory_total_mb"] == 24000
    assert worker["quiet"] is False and 0 <= worker["quiet_s"] < 5


def test_a_worker_silent_past_the_threshold_is_quiet() -> None:
    from orchestrator_stub.page import QUIET_AFTER_S, worker_row

    base = {"worker_id": "w", "gpu_class": "x", "state": "busy", "job_id": None, "stage": None, "progress": 0.0}
    base |= {"gpu": None, "first_seen": 0.0, "last_heartbeat": None}
    now = 1_000_000.0
    assert worker_row(base | {"last_seen": now - 2}, now)["quiet"] is False
    row = worker_row(base | {"last_seen": now - QUIET_AFTER_S - 1}, now)
    assert row["quiet"] is True and row["quiet_s"] == QUIET_AFTER_S + 1


def test_a_few_hundred_jobs_cost_one_small_answer_per_poll(page_stub: StubProcess) -> None:
    for n in range(300):
        page_stub.submit(f"job {n}")
    start = time.monotonic()
    everything = page_stub.get("/v1/studio/changes").json()
    first_s = time.monotonic() - start
    assert len(everything["jobs"]) >= 300
    time.sleep(0.3)
    start = time.monotonic()
    idle = page_stub.get("/v1/studio/changes", since=time.time() - 0.1).json()
    assert idle["jobs"] == [] and idle["counts"]["queued"] >= 300
    poll_s = time.monotonic() - start
    print(f"300 jobs: first load {first_s * 1000:.0f} ms, an idle poll {poll_s * 1000:.0f} ms")
    assert poll_s < 0.5
