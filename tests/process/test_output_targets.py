"""Storage end to end, with the S3-protocol server of tests/support/s3_server.py on loopback:

- protocol v1.2 output targets: the stub (holding the S3 key) hands each attempt presigned PUTs, workers with
  no storage credentials at all upload through them in buffer mode and in queue mode (the dispatcher), the
  stub checks the stored object against the result and serves the video and its poster;
- a late attempt cannot replace the reported video, a result that does not match the object is refused, an
  expired or refused target is a retryable `upload_failed` naming the status code;
- v1.1 and v1.2 together, both ways;
- buffer and queue mode with the worker's own S3 key, and buffer mode with B2 (b2sdk's simulator, in process:
  it lives in this process's memory).

One S3 server, two stubs and four workers (started side by side) serve the whole module.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.http_servers import free_port
from support.procs import WORKER_START_S, WorkerProcess, WorkerSet, wait_final
from support.s3_server import ADMIN, S3Server, s3_server  # noqa: F401 - the fixture
from support.stubs import API_KEY, REPO, StubProcess, Stubs

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.protocol import OutputTarget, UploadTarget
from worker_app_fastwan.job.target_upload import TargetStorage

BUCKET = "videos-bucket"
SMALL = {"width": 128, "height": 128, "num_frames": 9, "num_inference_steps": 1}
CAN_TARGET = {"output_target": True}
CREDENTIAL_PREFIXES = ("AWS_", "B2_", "S3_")


class NoCredentialsWorker(WorkerProcess):
    """A worker started with an environment that holds no storage variable at all (a rented box's)."""

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(CREDENTIAL_PREFIXES)}
        env |= {**self.env, "PYTHONPATH": str(REPO)}
        assert not any(k.startswith(CREDENTIAL_PREFIXES) for k in env if k != "STORAGE_BACKEND")
        return env


@dataclass
class World:
    s3: S3Server
    stub: StubProcess  # holds the S3 key: hands out output targets
    plain: StubProcess  # no storage of its own: a v1.1 orchestrator as far as outputs go
    dispatching: StubProcess  # holds the S3 key, and feeds the queue worker
    quiet: StubProcess  # holds the S3 key, no worker: the tests play the workers
    quiet_plain: StubProcess  # no storage, no worker
    presigned: WorkerProcess  # buffer mode, no credentials, claims from `stub`
    own_s3: WorkerProcess  # buffer mode, its own S3 key, claims from `plain`
    queue_s3: WorkerProcess  # queue mode, its own S3 key; the dispatcher's targets win over it
    queue_s3_url: str


B2_ORIGINS = "https://*.backblazeb2.com,http://download.example.com"


@pytest.fixture(scope="module")
def world(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:  # noqa: F811
    s3_server.client().create_bucket(Bucket=BUCKET)
    root = tmp_path_factory.mktemp("targets")
    stubs, workers = Stubs(root / "stubs"), WorkerSet()
    storage_env = s3_server.env(BUCKET, S3_PREFIX="stub/")
    queue_s3_port = free_port()
    try:
        stub = stubs.start(**storage_env)
        # A worker storing with its own key reports URLs on its store: the operator lists that origin.
        plain = stubs.start(STORAGE_ORIGINS=s3_server.url)
        dispatching = stubs.start("--dispatch-to", f"http://127.0.0.1:{queue_s3_port}/generate", **storage_env)
        # quiet_plain: workers with their own B2 key, prefix "b2/" (b2sdk's simulator serves download.example.com).
        quiet = stubs.start(**storage_env)
        quiet_plain = stubs.start(STORAGE_ORIGINS=B2_ORIGINS, STORAGE_PREFIX="b2/")
        started = [
            NoCredentialsWorker.buffer(
                root / "presigned", stub.url, BUFFER_WORKER_ID="rented-box", STORAGE_BACKEND="presigned"
            ),
            WorkerProcess.buffer(root / "own", plain.url, BUFFER_WORKER_ID="own-key", **s3_server.env(BUCKET)),
            WorkerProcess.queue(root / "queue-s3", queue_s3_port, **s3_server.env(BUCKET, S3_PREFIX="q/")),
        ]
        for worker in started:
            workers.add(worker)
        for worker in started[:2]:  # three start side by side on two busy cores: more than one's usual wait
            worker.wait_for_event("claiming jobs", timeout_s=3 * WORKER_START_S)
        _wait_ready(f"http://127.0.0.1:{queue_s3_port}", timeout_s=3 * WORKER_START_S)
        queue_s3_url = f"http://127.0.0.1:{queue_s3_port}"
        yield World(s3_server, stub, plain, dispatching, quiet, quiet_plain, *started, queue_s3_url)
    finally:
        workers.close()
        stubs.close()


def _wait_ready(base: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"queue worker at {base} never became ready")


def served(stub: StubProcess, job_id: str, what: str) -> httpx.Response:
    """What the page gets for the job's video or poster, redirects followed."""
    return httpx.get(f"{stub.url}/v1/jobs/{job_id}/{what}", follow_redirects=True, timeout=30)


def assert_poster(data: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "JPEG" and image.size == (SMALL["width"], SMALL["height"])
    assert len(data) < 60_000


# ---- workers with no credentials: presigned targets -------------------------------------------------------


def test_a_buffer_worker_without_credentials_uploads_to_its_target_and_the_stub_serves_it(world: World) -> None:
    import psutil

    environment = psutil.Process(world.presigned.pid).environ()
    assert not [k for k in environment if k.startswith(CREDENTIAL_PREFIXES) and k != "STORAGE_BACKEND"]
    assert not any(ADMIN["secret"] in v or ADMIN["key_id"] in v for v in environment.values())

    job_id = world.stub.submit("a fox, uploaded without a key", **SMALL)
    job = wait_final(world.stub, job_id)
    assert job["status"] == "completed", job
    result = job["result"]
    assert result["storage_key"].startswith(f"stub/videos/{job_id}/a1-") and result["storage_key"].endswith(".mp4")
    assert result["video_url"] == f"{world.stub.url}/v1/jobs/{job_id}/video"
    assert result["poster_url"] == f"{world.stub.url}/v1/jobs/{job_id}/poster"
    video = served(world.stub, job_id, "video")
    assert video.status_code == 200 and hashlib.sha256(video.content).hexdigest() == result["sha256"]
    assert len(video.content) == result["bytes"]
    poster = served(world.stub, job_id, "poster")
    assert poster.status_code == 200
    assert_poster(poster.content)


def test_a_queue_worker_uploads_to_the_dispatchers_target_rather_than_its_own_storage(world: World) -> None:
    job_id = world.dispatching.submit("a fox, dispatched", **SMALL)
    job = wait_final(world.dispatching, job_id)
    assert job["status"] == "completed", job
    result = job["result"]
    assert result["storage_key"].startswith(f"stub/videos/{job_id}/a1-d1-")
    video = served(world.dispatching, job_id, "video")
    assert hashlib.sha256(video.content).hexdigest() == result["sha256"]
    assert_poster(served(world.dispatching, job_id, "poster").content)


def test_a_worker_without_credentials_and_without_a_target_fails_retryable(tmp_path: Path) -> None:
    from worker_app_fastwan.core.settings import load_settings
    from worker_app_fastwan.job.storage import make_storage

    storage = make_storage(load_settings(None, STORAGE_BACKEND="presigned"))
    (tmp_path / "v.mp4").write_bytes(b"video")
    with pytest.raises(JobFailure) as caught:
        storage.upload(tmp_path / "v.mp4", "j", "0" * 64)
    assert caught.value.retryable and "STORAGE_BACKEND=presigned" in caught.value.message


# ---- what the stub checks ------------------------------------------------------------------------------


def _put(target: dict[str, Any], data: bytes, url: str | None = None) -> httpx.Response:
    return httpx.put(url or target["url"], content=data, headers=target["headers"], timeout=30)


def _result(job_id: str, key: str, data: bytes, url: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "video_url": url,
        "storage_key": key,
        "width": 128,
        "height": 128,
        "num_frames": 9,
        "fps": 24,
        "seed": 1,
        "mode": "t2v",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "timings": {},
    }


def _own_result(job_id: str, data: bytes, prefix: str = "") -> dict[str, Any]:
    """A result on a worker's own B2 bucket: its content-addressed key, on an origin the stub allows."""
    key = f"{prefix}videos/{job_id}/{hashlib.sha256(data).hexdigest()}.mp4"
    return _result(job_id, key, data, f"https://f000.backblazeb2.com/file/bucket/{key}")


def _claim(stub: StubProcess, worker_id: str, job_id: str, **caps: Any) -> dict[str, Any]:
    for _ in range(50):
        answer = stub.claim(worker_id, capabilities={"modes": ["t2v"], "max_frames": 5, **caps})
        if answer.status_code == 200 and answer.json()["job"]["job_id"] == job_id:
            return answer.json()["job"]
        time.sleep(0.05)
    pytest.fail(f"{job_id} was not claimed")


def test_a_late_attempt_cannot_replace_the_reported_video(world: World) -> None:
    stub = world.quiet
    job_id = stub.submit("two attempts", width=128, height=128, num_frames=5)
    first = _claim(stub, "late-1", job_id, **CAN_TARGET)
    error = {"code": "out_of_memory", "message": "test", "retryable": True}
    assert stub.status(job_id, "late-1", "failed", error=error, attempt=1).status_code == 200  # requeued
    second = _claim(stub, "late-2", job_id, **CAN_TARGET)
    t1, t2 = first["output"]["video"], second["output"]["video"]
    assert second["attempt"] == 2 and t1["storage_key"] != t2["storage_key"]

    reported = b"attempt two's video"
    assert _put(t2, reported).status_code == 200
    body = _result(job_id, t2["storage_key"], reported, t2["serve_url"])
    assert stub.status(job_id, "late-2", "completed", result=body, attempt=2).status_code == 200

    late = b"attempt one, finishing late"
    assert _put(t2, late, url=t1["url"].replace(t1["storage_key"], t2["storage_key"])).status_code == 403
    assert _put(t2, late).status_code == 412, "a target is written once, even by its own attempt"
    assert _put(t1, late).status_code == 200  # its own key, beside the reported one
    late_report = _result(job_id, t1["storage_key"], late, t1["serve_url"])
    assert stub.status(job_id, "late-1", "completed", result=late_report, attempt=1).status_code == 409
    assert served(stub, job_id, "video").content == reported
    assert stub.job(job_id)["result"]["storage_key"] == t2["storage_key"]


@pytest.mark.parametrize("lie", ["sha256", "bytes", "nothing stored"])
def test_a_result_that_does_not_match_the_stored_object_is_refused_and_requeued(world: World, lie: str) -> None:
    stub = world.quiet
    job_id = stub.submit(f"a lie about {lie}", width=128, height=128, num_frames=5)
    claimed = _claim(stub, "liar", job_id, **CAN_TARGET)
    target = claimed["output"]["video"]
    stored = b"what was really uploaded"
    if lie != "nothing stored":
        assert _put(target, stored).status_code == 200
    claimed_bytes = {"sha256": b"something else entirely!", "bytes": stored + b"+"}.get(lie, stored)
    body = _result(job_id, target["storage_key"], claimed_bytes, target["serve_url"])
    if lie == "sha256":
        body["bytes"] = len(stored)
    answer = stub.status(job_id, "liar", "completed", result=body, attempt=1)
    assert answer.status_code == 422, answer.text
    job = stub.job(job_id)
    assert job["status"] == "queued" and job["last_error"]["code"] == "upload_failed"
    assert job["last_error"]["retryable"] and job["result"] is None


def test_v11_and_v12_together_both_ways(world: World) -> None:
    # A v1.1 worker (no output_target) from a v1.2 stub: no target; its result on its own storage is accepted.
    job_id = world.quiet.submit("an old worker", width=128, height=128, num_frames=5)
    claimed = _claim(world.quiet, "old-worker", job_id)
    assert claimed.get("output") is None
    body = _own_result(job_id, b"x")
    assert world.quiet.status(job_id, "old-worker", "completed", result=body, attempt=1).status_code == 200
    # A v1.2 worker from a stub without storage (as a v1.1 orchestrator): no target, it stores on its own.
    job_id = world.quiet_plain.submit("an old orchestrator", width=128, height=128, num_frames=5)
    assert _claim(world.quiet_plain, "new-worker", job_id, **CAN_TARGET).get("output") is None
    body = _own_result(job_id, b"y", prefix="b2/")
    assert world.quiet_plain.status(job_id, "new-worker", "completed", result=body, attempt=1).status_code == 200


# ---- a target that has expired or is refused -----------------------------------------------------------------


def _target(s3: S3Server, key: str, expires_s: int) -> OutputTarget:
    url = s3.client().generate_presigned_url(
        "put_object",
        Params={"Bucket": BUCKET, "Key": key, "ContentType": "video/mp4", "IfNoneMatch": "*"},
        ExpiresIn=expires_s,
    )
    headers = {"Content-Type": "video/mp4", "If-None-Match": "*"}
    upload = UploadTarget(url=url, headers=headers, storage_key=key, serve_url="http://stub.example/v")
    return OutputTarget(video=upload)


def test_an_expired_or_refused_target_is_a_retryable_upload_failed_naming_the_status(world: World, tmp_path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"video")
    expired = _target(world.s3, "direct/expired.mp4", 1)
    time.sleep(2.1)
    with pytest.raises(JobFailure) as caught:
        TargetStorage(expired, retry_wait_s=0.001).upload(tmp_path / "v.mp4", "j", "0" * 64)
    assert caught.value.retryable and "HTTP 403 (AccessDenied: Request has expired)" in caught.value.message
    assert "X-Amz-Signature" not in caught.value.message

    forged = _target(world.s3, "direct/forged.mp4", 60)
    forged.video.url = forged.video.url.replace("direct/forged.mp4", "direct/elsewhere.mp4")
    with pytest.raises(JobFailure) as caught:
        TargetStorage(forged, retry_wait_s=0.001).upload(tmp_path / "v.mp4", "j", "0" * 64)
    assert caught.value.retryable and "HTTP 403 (SignatureDoesNotMatch" in caught.value.message

    ok = _target(world.s3, "direct/ok.mp4", 60)
    stored = TargetStorage(ok, retry_wait_s=0.001).upload(tmp_path / "v.mp4", "j", "0" * 64)
    assert stored.key == "direct/ok.mp4" and stored.url == "http://stub.example/v" and stored.bytes == 5


# ---- workers with their own key: S3 in both modes, B2 (simulator) in buffer mode ---------------------------------


def test_a_buffer_worker_with_its_own_s3_key_stores_there(world: World) -> None:
    job_id = world.plain.submit("own key, buffer mode", **SMALL)
    job = wait_final(world.plain, job_id)
    assert job["status"] == "completed", job
    result = job["result"]
    assert result["storage_key"] == f"videos/{job_id}/{result['sha256']}.mp4"
    video = httpx.get(result["video_url"], timeout=30)  # a presigned GET
    assert hashlib.sha256(video.content).hexdigest() == result["sha256"]
    assert_poster(httpx.get(result["poster_url"], timeout=30).content)
    assert served(world.plain, job_id, "poster").status_code == 200  # the stub redirects to the worker's URL


def test_a_queue_worker_with_its_own_s3_key_stores_there(world: World) -> None:
    answer = httpx.post(
        f"{world.queue_s3_url}/generate", json={"prompt": "own key, queue mode", "job_id": "q-1", **SMALL}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["storage_key"] == f"q/videos/q-1/{result['sha256']}.mp4"
    assert result["poster_key"] == f"q/videos/q-1/{result['sha256']}.jpg"
    assert hashlib.sha256(httpx.get(result["video_url"], timeout=30).content).hexdigest() == result["sha256"]
    assert_poster(httpx.get(result["poster_url"], timeout=30).content)


def test_a_buffer_worker_with_b2_stores_there(world: World, tmp_path: Path) -> None:
    """In process: b2sdk's simulator lives in this process's memory. The GPU process is real."""
    import asyncio
    import functools

    from support.b2 import download, new_api

    from worker_app_fastwan.buffer.outbox import Outbox
    from worker_app_fastwan.buffer.slot import Slot
    from worker_app_fastwan.core.settings import load_settings
    from worker_app_fastwan.job.runner import build_runner
    from worker_app_fastwan.job.storage import B2Storage
    from worker_app_fastwan.orchestrator.client import OrchestratorClient

    api, key_id, key = new_api()
    api.authorize_account(realm="production", application_key_id=key_id, application_key=key)
    api.create_bucket("b2-videos", "allPrivate")
    settings = load_settings(
        None,
        PIPELINE_BACKEND="tiny",
        STATE_DIR=tmp_path / "state",
        ORCHESTRATOR_BASE_URL=world.quiet_plain.url,
        INTERNAL_API_KEY=API_KEY,
        HEARTBEAT_INTERVAL_S=1,
        CLAIM_POLL_S=0.2,
        LOG_LEVEL="WARNING",
    )
    job_id = world.quiet_plain.submit("b2, buffer mode", **SMALL)

    async def one_job() -> int:
        client = OrchestratorClient.from_settings(settings)
        assert client is not None
        make_runner = functools.partial(build_runner, settings, B2Storage(api, "b2-videos", prefix="b2/"))
        slot = Slot(settings, make_runner, client, Outbox(tmp_path / "outbox"), "b2-worker", max_jobs=1)
        return await slot.run()

    assert asyncio.run(one_job()) == 0
    job = wait_final(world.quiet_plain, job_id, timeout_s=30)
    assert job["status"] == "completed", job
    result = job["result"]
    data = download(api, "b2-videos", result["storage_key"])
    assert result["storage_key"] == f"b2/videos/{job_id}/{result['sha256']}.mp4"
    assert hashlib.sha256(data).hexdigest() == result["sha256"]
    assert_poster(download(api, "b2-videos", result["poster_key"]))
