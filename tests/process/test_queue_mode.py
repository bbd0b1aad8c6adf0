"""Queue mode over real HTTP: `python -m worker_app_fastwan serve` (uvicorn, tiny backend) on a loopback port."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from PIL import Image
from support.http_servers import free_port, serve
from support.procs import WORKER_START_S, WorkerProcess, assert_torch_only_in_the_gpu_child, wait_health
from support.semantic import assert_shows_prompt, assert_starts_from_image_and_moves, world_image
from support.stubs import API_KEY
from support.video import png_bytes, read_video

SMALL = {"width": 128, "height": 128, "num_frames": 9}
# The miniature model's world at the size it was trained at (docs/miniature.md): what the video shows is judged.
WORLD = {"width": 128, "height": 128, "num_frames": 17}
I2V_PROMPT = "a yellow circle moving up"
B2_SECRETS = {"B2_KEY_ID": "key-id-0042", "B2_APP_KEY": "b2-app-key-s3cr3t", "B2_BUCKET_NAME": "bucket"}
# The tiny model's pacing (pipelines/tiny.py): each denoising step lasts a second more, as on a GPU, so a
# job is long enough to act on while it runs without the CPU being busy all that time.
PACED = "[tiny:pace=1]"


class Recorder:
    """A loopback orchestrator that records progress POSTs, and an image host."""

    def __init__(self) -> None:
        self.progress: list[tuple[str, str | None, dict]] = []
        self.app = FastAPI()
        self.world_image = world_image(I2V_PROMPT, seed=2)  # a first frame of the world, the circle to move up
        image = png_bytes(Image.fromarray(self.world_image))

        @self.app.post("/internal/videogen/jobs/{job_id}/progress")
        async def progress(job_id: str, request: Request) -> Response:
            self.progress.append((job_id, request.headers.get("x-internal-api-key"), await request.json()))
            return Response(status_code=204)

        @self.app.get("/image.png")
        async def image_png() -> Response:
            return Response(image, media_type="image/png")


def start_worker(tmp: Path, port: int, orchestrator: str, **env: str) -> WorkerProcess:
    return WorkerProcess.queue(
        tmp,
        port,
        name=f"worker-{port}",
        ORCHESTRATOR_BASE_URL=orchestrator,
        ALLOW_PRIVATE_IMAGE_URLS="true",
        PROGRESS_MIN_INTERVAL_S="0.2",
        **env,
    ).start()


def wait_status(base: str, want: str, timeout_s: float = WORKER_START_S) -> dict:
    return wait_health(base, (want,), timeout_s)


@pytest.fixture(scope="module")
def recorder():
    rec = Recorder()
    with serve(rec.app) as url:
        rec.url = url
        yield rec


@pytest.fixture(scope="module")
def worker(tmp_path_factory, recorder):
    tmp = tmp_path_factory.mktemp("queue")
    port = free_port()
    # B2 credentials beside local storage: the GPU child must see none of them (test_gpu_child_gets_no_secrets).
    proc = start_worker(tmp, port, recorder.url, STORAGE_BACKEND="local", **B2_SECRETS)
    base = f"http://127.0.0.1:{port}"
    first = wait_status(base, "starting", timeout_s=30)
    ready = wait_status(base, "ready")
    yield {"base": base, "proc": proc, "first": first, "ready": ready, "tmp": tmp}
    proc.stop(30)


def post(base: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{base}/generate", json=body, headers=headers, timeout=120)


def test_health_goes_from_starting_to_ready(worker):
    assert worker["first"]["status"] == "starting"
    assert worker["ready"]["backend"] == "tiny" and worker["ready"]["device"] == "cpu"
    assert httpx.get(f"{worker['base']}/health").status_code == 200


def test_start_up_logs_the_settings_but_never_the_key(worker):
    settings_line = worker["proc"].events("settings")[0]
    assert settings_line["PIPELINE_BACKEND"] == "tiny" and settings_line["INTERNAL_API_KEY"] == "***"
    assert API_KEY not in worker["proc"].log_text()


def test_gpu_child_gets_no_secrets(worker):
    import psutil

    parent = psutil.Process(worker["proc"].proc.pid)
    children = [p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
    gpu_child = [p for p in children if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(gpu_child) == 1, [p.cmdline() for p in children]
    tracker = [p for p in parent.children() if "resource_tracker" in " ".join(p.cmdline())]
    assert parent.environ()["INTERNAL_API_KEY"] == API_KEY and parent.environ()["B2_APP_KEY"]  # the parent has them
    for child in gpu_child + tracker:  # the GPU child, and multiprocessing's resource tracker
        env = child.environ()
        leaked = {k for k, v in env.items() if k.startswith(("B2_", "INTERNAL_", "ORCHESTRATOR_")) or API_KEY in v}
        assert not leaked and "PATH" in env, child.cmdline()


def test_a_model_that_cannot_load_makes_health_unhealthy(tmp_path):
    (tmp_path / "empty-model").mkdir()
    port = free_port()
    proc = WorkerProcess.queue(
        tmp_path,
        port,
        PIPELINE_BACKEND="diffusers",
        MODEL_PATH=str(tmp_path / "empty-model"),
        ALLOW_CPU_INFERENCE="true",  # past the no-CUDA refusal, to the model folder check
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        body = wait_status(base, "unhealthy")
        resp = httpx.get(f"{base}/health")
        refused = post(base, {"prompt": "x", **SMALL})
    finally:
        proc.stop(30)
    assert resp.status_code == 503 and "empty-model" in body["reason"]
    assert refused.status_code == 503 and refused.json()["error"]["retryable"] is True
    for text in (resp.text, refused.text):  # the folder is named, this machine's layout is not
        assert str(tmp_path) not in text and "…/empty-model" in text, text


def test_t2v_job_returns_a_result_whose_mp4_matches(worker):
    """...the request, and the prompt: the stored MP4 shows the object and the motion asked for (a prompt and
    seed the shipped miniature gets right)."""
    prompt = "a purple circle moving down"
    resp = post(worker["base"], {"prompt": prompt, **WORLD, "fps": 8, "seed": 3}, **{"Salad-Job-Id": "salad-t2v-1"})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["job_id"] == "salad-t2v-1" and result["storage_key"] == f"videos/salad-t2v-1/{result['sha256']}.mp4"
    frames, meta = read_video(result["video_url"].removeprefix("file://"))
    assert frames.shape == (17, 128, 128, 3) and meta["fps"] == 8
    assert (result["mode"], result["seed"], result["status"]) == ("t2v", 3, "completed")
    assert_shows_prompt(result["video_url"].removeprefix("file://"), prompt)


def test_i2v_job_from_a_loopback_image_host(worker, recorder):
    """The stored MP4 starts from the downloaded image and moves as the prompt says."""
    body = {"prompt": I2V_PROMPT, "image_url": f"{recorder.url}/image.png", **WORLD, "job_id": "i2v-1", "seed": 5}
    resp = post(worker["base"], body)
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["mode"] == "i2v" and result["timings"]["download_s"] > 0
    video = result["video_url"].removeprefix("file://")
    frames, _ = read_video(video)
    assert frames.shape == (17, 128, 128, 3)
    assert_starts_from_image_and_moves(video, recorder.world_image, I2V_PROMPT)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"width": 300}, "width"),
        ({"num_frames": 12}, "num_frames"),
        ({"prompt": ""}, "prompt"),
        ({"image_url": "file:///etc/passwd"}, "image_url"),
        ({"fps": 0}, "fps"),
        ({"seed": -5}, "seed"),
        ({"num_inference_steps": 20}, "num_inference_steps"),
        ({"num_inference_steps": 4}, "num_inference_steps"),  # never distilled: 1-3 only
        ({"job_id": "bad id!"}, "job_id"),
    ],
)
def test_each_invalid_field_is_a_422_naming_it(worker, patch, field):
    resp = post(worker["base"], {"prompt": "ok", **SMALL, **patch})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["code"] == "invalid_input" and error["retryable"] is False
    assert error["message"].startswith(f"{field}:"), error["message"]


def test_malformed_json_is_a_final_4xx(worker):
    resp = httpx.post(
        f"{worker['base']}/generate", content=b"{not json", timeout=10, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_input"


def test_second_concurrent_job_gets_429(worker):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, worker["base"], {"prompt": f"a long one {PACED}", **SMALL, "job_id": "long-a"})
        health = wait_status(worker["base"], "busy", timeout_s=30)
        second = post(worker["base"], {"prompt": "me too", **SMALL, "job_id": "long-b"})
        assert first.result(120).status_code == 200
    assert health["job_id"] == "long-a"
    assert second.status_code == 429 and second.json()["error"]["retryable"] is True


def test_unreachable_image_is_a_retryable_5xx(worker):
    body = {"prompt": "x", **SMALL, "image_url": f"http://127.0.0.1:{free_port()}/gone.png"}
    resp = post(worker["base"], body)
    assert resp.status_code in (500, 503)
    error = resp.json()["error"]
    assert error["code"] == "image_download_failed" and error["retryable"] is True


def test_progress_reaches_the_orchestrator_with_the_key_and_only_grows(worker, recorder):
    resp = post(worker["base"], {"prompt": "progress please", **SMALL, "num_inference_steps": 3, "job_id": "prog-1"})
    assert resp.status_code == 200
    deadline = time.monotonic() + 10
    while not any(b["stage"] == "uploading" for j, _, b in recorder.progress if j == "prog-1"):
        assert time.monotonic() < deadline, recorder.progress
        time.sleep(0.05)
    mine = [(key, body) for job, key, body in recorder.progress if job == "prog-1"]
    assert all(key == API_KEY for key, _ in mine)
    values = [body["progress"] for _, body in mine]
    assert values == sorted(values) and 0 <= values[0] and values[-1] <= 1
    stages = [body["stage"] for _, body in mine]
    assert stages[0] == "encoding_prompt" and "denoising" in stages and "uploading" in stages


def _counter(base: str, labels: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f"fastwan_jobs_total{{{labels}}}"):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_jobs(worker):
    base = worker["base"]
    completed, invalid = (
        _counter(base, 'code="",outcome="completed"'),
        _counter(base, 'code="invalid_input",outcome="failed"'),
    )
    assert post(base, {"prompt": "count me", **SMALL}).status_code == 200
    assert post(base, {"prompt": "count me", **SMALL, "width": 100}).status_code == 422
    assert _counter(base, 'code="",outcome="completed"') == completed + 1
    assert _counter(base, 'code="invalid_input",outcome="failed"') == invalid + 1
    text = httpx.get(f"{base}/metrics").text
    assert 'fastwan_stage_seconds_count{stage="denoising"}' in text and "fastwan_queue_wait_seconds" in text


def test_the_parent_process_never_imports_torch(worker):
    assert post(worker["base"], {"prompt": "one job first", **SMALL}).status_code == 200
    assert_torch_only_in_the_gpu_child(worker["proc"].pid)


def test_index_and_openapi_document_the_endpoints(worker):
    assert "POST /generate" in httpx.get(f"{worker['base']}/").json()["endpoints"]
    spec = httpx.get(f"{worker['base']}/openapi.json").json()
    generate = spec["paths"]["/generate"]["post"]
    assert "prompt" in generate["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"200", "422", "429", "503"} <= set(generate["responses"])


def test_queue_mode_uploads_to_b2(tmp_path):
    """The same app in-process (the simulator lives in this process's memory), GPU child and all."""
    import hashlib
    import urllib.parse

    from support.b2 import download, new_api

    from worker_app_fastwan.core.metrics import Metrics
    from worker_app_fastwan.core.settings import load_settings
    from worker_app_fastwan.job.runner import build_runner
    from worker_app_fastwan.job.storage import B2Storage
    from worker_app_fastwan.queue_mode import QueueWorker, create_app

    api, key_id, key = new_api()
    api.authorize_account(realm="production", application_key_id=key_id, application_key=key)
    api.create_bucket("videos-bucket", "allPrivate")
    settings = load_settings(None, PIPELINE_BACKEND="tiny", STATE_DIR=tmp_path / "state", B2_PREFIX="prod/")
    storage = B2Storage(api, "videos-bucket", prefix=settings.B2_PREFIX)
    metrics = Metrics()
    worker = QueueWorker(settings, build_runner(settings, storage, metrics=metrics))
    app = create_app(settings, worker, metrics)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_status(base, "ready")
        resp = post(base, {"prompt": "to the cloud", **SMALL}, **{"Salad-Job-Id": "b2-job-1"})
    finally:
        server.should_exit = True
        thread.join(30)
    assert resp.status_code == 200, resp.text
    result = resp.json()
    key = f"prod/videos/b2-job-1/{result['sha256']}.mp4"
    assert result["storage_key"] == key
    data = download(api, "videos-bucket", key)
    assert len(data) == result["bytes"] and hashlib.sha256(data).hexdigest() == result["sha256"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(result["video_url"]).query)
    assert query.get("Authorization"), "a private bucket's URL carries a download authorization"
    info = api.get_bucket_by_name("videos-bucket").get_file_info_by_name(key)
    assert info.content_type == "video/mp4" and info.file_info.get("job_id") == "b2-job-1"


def raw_post(base: str, content: bytes | object, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{base}/generate", content=content, headers={"Content-Type": "application/json", **headers}, timeout=60
    )


@pytest.mark.parametrize("field", ["prompt", "image_url", "notify_url", "negative_prompt"])
def test_a_lone_surrogate_is_a_422_naming_its_field(worker, field):
    # JSON may spell a lone surrogate; Python decodes it into a str that cannot be encoded again.
    body = b'{"prompt": "ok", "width": 256, "height": 256, "num_frames": 9, "%s": "a\\ud800b"}' % field.encode()
    resp = raw_post(worker["base"], body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_input" and not error["retryable"]
    assert error["message"].startswith(f"{field}: is not valid Unicode"), error["message"]


def test_a_lone_surrogate_in_a_body_not_typed_as_json_is_a_422(worker):
    resp = raw_post(worker["base"], b'{"prompt": "\\ud800"}', **{"Content-Type": "text/plain"})
    assert resp.status_code == 422 and resp.json()["error"]["message"].startswith("prompt: ")


def test_a_lone_surrogate_in_a_key_is_a_422(worker):
    resp = raw_post(worker["base"], b'{"prompt": "ok", "\\udfff": 1}')
    assert resp.status_code == 422 and "field name is not valid Unicode" in resp.json()["error"]["message"]


def test_a_bad_output_target_is_a_422_naming_its_field_before_any_work(worker):
    target = {"url": "ftp://bucket.example/k", "storage_key": "k", "serve_url": "https://o.example/v"}
    resp = post(worker["base"], {"prompt": "somewhere odd", **SMALL, "output": {"video": target}})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_input" and error["message"].startswith("output.video.url: must be an http(s)")


def test_a_50_mb_prompt_is_a_413_before_it_is_read(worker):
    prompt = b"a" * (50 << 20)
    resp = raw_post(worker["base"], b'{"prompt": "' + prompt + b'"}')
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["message"] == "body: larger than the 65536-byte limit"


def test_a_chunked_body_is_capped_while_streaming(worker):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"a" * 4096  # 160 KiB, no Content-Length
        yield b'"}'

    resp = raw_post(worker["base"], chunks())
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "ok", "extra": ' + b"[" * 40 + b"]" * 40 + b"}",  # deeper than the job input needs
        b"[" * 30000 + b"]" * 30000,  # deeper than the JSON parser's own stack
        b'{"prompt": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
    ],
)
def test_deep_nesting_is_a_400_never_a_500(worker, body):
    resp = raw_post(worker["base"], body)
    assert resp.status_code == 400, resp.text
    assert "nested deeper than" in resp.json()["error"]["message"]


def test_fuzzed_generate_never_answers_a_server_error(worker):
    """Property-based fuzzing of /generate from its OpenAPI document (support/fuzz.py, schemathesis): valid and
    schema-breaking bodies and Salad-Job-Id headers; no 5xx but the protocol's retryable image-host one."""
    from support.fuzz import cheap, fuzz, generate_check

    outcome = fuzz(f"{worker['base']}/openapi.json", generate_check, prepare=cheap)
    assert ("POST", "/generate") in outcome["seen"]
    assert not outcome["problems"], "\n".join(outcome["problems"][:10])
    codes = outcome["codes"][("POST", "/generate")]
    assert codes[422] > 0, codes
    assert wait_status(worker["base"], "ready", timeout_s=30)["status"] == "ready", "the worker still serves"


def test_sigterm_finishes_the_job_in_flight_then_exits_0(worker):
    """The last test of the module: it ends the shared worker (DRAIN_TIMEOUT_S at its default)."""
    base, proc = worker["base"], worker["proc"]
    results: dict = {}
    thread = threading.Thread(target=lambda: results.update(r=post(base, {"prompt": f"drain {PACED}", **SMALL})))
    thread.start()
    wait_status(base, "busy", timeout_s=30)
    proc.signal(signal.SIGTERM)
    draining = wait_status(base, "draining", timeout_s=5)
    refused = post(base, {"prompt": "too late", **SMALL})
    thread.join(120)
    assert proc.wait(60) == 0
    assert draining["status"] == "draining"
    assert refused.status_code == 503 and refused.json()["error"]["retryable"] is True
    assert results["r"].status_code == 200 and results["r"].json()["num_frames"] == SMALL["num_frames"]
