"""OrchestratorClient and ProgressThrottle against a real loopback orchestrator."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from support.http_servers import free_port, serve
from support.stubs import until

from worker_app_fastwan.core.protocol import ClaimRequest, HeartbeatRequest, ProgressUpdate, StatusUpdate
from worker_app_fastwan.core.schema import JobError, Stage
from worker_app_fastwan.core.settings import load_settings
from worker_app_fastwan.orchestrator.client import (
    API_KEY_HEADER,
    HeartbeatFailed,
    OrchestratorClient,
    OrchestratorRejected,
    RetryableStatus,
    is_retryable,
)
from worker_app_fastwan.orchestrator.progress import ProgressThrottle

KEY = "k3y-that-must-never-show"
FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.05}
T = TypeVar("T")


def build_app() -> FastAPI:
    """A scripted orchestrator: `app.state.script[path]` lists the status codes to answer first."""
    app = FastAPI()
    app.state.requests = []
    app.state.script = {}
    app.state.jobs = []
    app.state.delay_s = 0.0

    @app.middleware("http")
    async def record(request: Request, call_next):  # type: ignore[no-untyped-def]
        body = await request.body()
        app.state.requests.append((request.url.path, request.headers.get(API_KEY_HEADER), body))
        if app.state.delay_s:
            await asyncio.sleep(app.state.delay_s)
        if request.headers.get(API_KEY_HEADER) != KEY:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        script = app.state.script.get(request.url.path)
        if script:
            return Response(status_code=script.pop(0))
        return await call_next(request)

    @app.post("/internal/buffer/jobs/claim")
    async def claim() -> Response:
        if not app.state.jobs:
            return Response(status_code=204)
        return JSONResponse({"job": app.state.jobs.pop(0)})

    @app.post("/internal/buffer/workers/{worker_id}/heartbeat")
    async def heartbeat(worker_id: str) -> dict[str, Any]:
        return {"cancel_job_ids": ["j-cancel"], "extra": "ignored"}

    @app.post("/internal/buffer/jobs/{job_id}/status")
    async def status(job_id: str) -> dict[str, Any]:
        return {}

    @app.post("/internal/videogen/jobs/{job_id}/progress")
    async def progress(job_id: str) -> Response:
        return Response(status_code=204)

    return app


@pytest.fixture(scope="module")
def orchestrator() -> Iterator[tuple[str, FastAPI]]:
    app = build_app()
    with serve(app) as base:
        yield base, app


@pytest.fixture
def server(orchestrator: tuple[str, FastAPI]) -> tuple[str, FastAPI]:
    base, app = orchestrator
    app.state.requests.clear()
    app.state.script.clear()
    app.state.jobs.clear()
    app.state.delay_s = 0.0
    return base, app


def run(base: str, fn: Callable[[OrchestratorClient], Awaitable[T]], key: str = KEY) -> T:
    async def main() -> T:
        async with OrchestratorClient(base, key, **FAST, quick_timeout_s=0.5) as client:
            return await fn(client)

    return asyncio.run(main())


def hits(app: FastAPI, suffix: str) -> list[tuple[str, str | None, bytes]]:
    return [r for r in app.state.requests if r[0].endswith(suffix)]


def status_update(status: str = "running") -> StatusUpdate:
    return StatusUpdate(worker_id="w1", status=status)  # type: ignore[arg-type]


def test_retryable_statuses_are_retried_until_ok(server) -> None:
    base, app = server
    app.state.script["/internal/buffer/jobs/j1/status"] = [503, 503]
    assert run(base, lambda c: c.post_status("j1", status_update())) == "ok"
    calls = hits(app, "/j1/status")
    assert len(calls) == 3 and all(key == KEY for _, key, _ in calls)
    assert b'"worker_id":"w1"' in calls[0][2]


@pytest.mark.parametrize("code", [408, 429, 500, 502])
def test_each_retryable_status(server, code: int) -> None:
    base, app = server
    app.state.script["/internal/buffer/jobs/j2/status"] = [code]
    assert run(base, lambda c: c.post_status("j2", status_update())) == "ok"
    assert len(hits(app, "/j2/status")) == 2


def test_409_means_gone(server) -> None:
    base, app = server
    app.state.script["/internal/buffer/jobs/j3/status"] = [409]
    error = JobError(code="cancelled", message="x", retryable=False)
    failed = StatusUpdate(worker_id="w1", status="failed", error=error)
    assert run(base, lambda c: c.post_status("j3", failed)) == "gone"
    assert len(hits(app, "/j3/status")) == 1


@pytest.mark.parametrize("code", [400, 404, 422])
def test_other_4xx_is_final_after_one_attempt(server, code: int) -> None:
    base, app = server
    app.state.script["/internal/buffer/jobs/j4/status"] = [code]
    with pytest.raises(OrchestratorRejected) as info:
        run(base, lambda c: c.post_status("j4", status_update()))
    assert info.value.status_code == code and len(hits(app, "/j4/status")) == 1


def test_wrong_key_is_rejected_and_never_echoed(server, caplog) -> None:
    base, app = server
    with caplog.at_level(logging.DEBUG), pytest.raises(OrchestratorRejected) as info:
        run(base, lambda c: c.post_status("j5", status_update()), key="wrong-" + KEY)
    assert info.value.status_code == 401
    client = OrchestratorClient(base, KEY)
    for text in (str(info.value), repr(client), str(client), caplog.text):
        assert KEY not in text
    asyncio.run(client.aclose())


def test_claim_returns_none_on_204_and_the_job_on_200(server) -> None:
    base, app = server
    req = ClaimRequest(worker_id="w1", gpu_class="h100")

    async def twice(client: OrchestratorClient) -> list[Any]:
        first = await client.claim(req)
        app.state.jobs.append({"job_id": "j6", "input": {"prompt": "a cat"}, "attempt": 2, "lease_seconds": 30})
        return [first, await client.claim(req)]

    empty, job = run(base, twice)
    assert empty is None
    assert job.job_id == "j6" and job.input == {"prompt": "a cat"} and job.attempt == 2
    assert b'"gpu_class":"h100"' in hits(app, "/claim")[0][2]


def test_claim_with_bad_body_is_rejected(server) -> None:
    base, app = server
    app.state.jobs.append({"not": "a job"})
    with pytest.raises(OrchestratorRejected):
        run(base, lambda c: c.claim(ClaimRequest(worker_id="w1")))


def test_heartbeat_one_attempt(server) -> None:
    base, app = server
    hb = HeartbeatRequest(state="busy", job_id="j7", stage=Stage.denoising, progress=0.5)
    assert run(base, lambda c: c.heartbeat("w1", hb)).cancel_job_ids == ["j-cancel"]
    app.state.script["/internal/buffer/workers/w1/heartbeat"] = [503]
    with pytest.raises(HeartbeatFailed) as info:
        run(base, lambda c: c.heartbeat("w1", hb))
    assert "503" in str(info.value) and len(hits(app, "/heartbeat")) == 2


def test_heartbeat_times_out_quickly(server) -> None:
    base, app = server
    app.state.delay_s = 2.0
    started = time.monotonic()
    with pytest.raises(HeartbeatFailed, match="Timeout"):
        run(base, lambda c: c.heartbeat("w1", HeartbeatRequest(state="idle")))
    assert time.monotonic() - started < 1.5


def test_connection_refused_is_retried_until_the_server_comes_up() -> None:
    port = free_port()
    app = build_app()
    stop = threading.Event()

    def start_later() -> None:
        time.sleep(0.4)
        with serve(app, port):
            stop.wait(10)

    thread = threading.Thread(target=start_later, daemon=True)
    thread.start()
    try:
        result = run(f"http://127.0.0.1:{port}", lambda c: c.post_status("j8", status_update(), deadline_s=8))
    finally:
        stop.set()
        thread.join(5)
    assert result == "ok" and len(hits(app, "/j8/status")) == 1


def test_deadline_ends_retries_with_the_last_error(caplog) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING), pytest.raises(httpx.ConnectError):
        run(base, lambda c: c.claim(ClaimRequest(worker_id="w1"), deadline_s=0.3))
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) >= 2


def test_post_progress_never_raises(server) -> None:
    base, app = server
    update = ProgressUpdate(worker_id="w1", stage=Stage.denoising, progress=0.1)
    app.state.script["/internal/videogen/jobs/j9/progress"] = [500]
    run(base, lambda c: c.post_progress("j9", update))
    run(f"http://127.0.0.1:{free_port()}", lambda c: c.post_progress("j9", update))
    assert len(hits(app, "/j9/progress")) == 1  # one attempt, not retried


def test_from_settings() -> None:
    assert OrchestratorClient.from_settings(load_settings(None)) is None
    settings = load_settings(None, ORCHESTRATOR_BASE_URL="http://orch.test/", INTERNAL_API_KEY=KEY, RETRY_MAX_S=7)
    client = OrchestratorClient.from_settings(settings)
    assert client is not None and client.base_url == "http://orch.test" and client.retry.max_s == 7
    asyncio.run(client.aclose())


def test_retry_classification() -> None:
    assert is_retryable(httpx.ConnectError("refused")) and is_retryable(httpx.ReadTimeout("slow"))
    assert is_retryable(RetryableStatus("status", 503))
    assert not is_retryable(OrchestratorRejected("status", 400)) and not is_retryable(ValueError())


# --- ProgressThrottle ---


def sent_progress(app: FastAPI, job_id: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(body) for _, _, body in hits(app, f"/jobs/{job_id}/progress")]


def with_reporter(base: str | None, body: Callable[[ProgressThrottle], Awaitable[None]], interval: float = 0.3) -> None:
    async def main() -> None:
        client = OrchestratorClient(base, KEY, **FAST, quick_timeout_s=0.5) if base else None
        reporter = ProgressThrottle(client, "w1", min_interval_s=interval)
        await body(reporter)
        await reporter.aclose()
        if client:
            await client.aclose()

    asyncio.run(main())


def test_reporter_throttles_within_a_stage_and_flushes_the_last_value(server) -> None:
    base, app = server

    async def body(reporter: ProgressThrottle) -> None:
        for i in range(20):
            reporter.report("p1", Stage.denoising, 0.2 + i * 0.01, step=i, total_steps=20)
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)  # past the interval: the trailing value goes out by itself

    with_reporter(base, body)
    sent = sent_progress(app, "p1")
    assert len(sent) == 2
    assert sent[0]["progress"] == pytest.approx(0.2) and sent[-1]["progress"] == pytest.approx(0.39)
    assert sent[-1]["step"] == 19 and sent[-1]["worker_id"] == "w1"


def test_reporter_sends_every_stage_change_even_while_a_send_is_in_flight(server) -> None:
    base, app = server
    app.state.delay_s = 0.1
    stages = list(Stage)

    async def body(reporter: ProgressThrottle) -> None:
        for i, stage in enumerate(stages):
            reporter.report("p2", stage, i / 10)
            reporter.report("p2", stage, i / 10 + 0.01)  # same stage: replaces the one above if not yet sent
        await until(lambda: len(sent_progress(app, "p2")) >= len(stages))

    with_reporter(base, body, interval=5.0)
    sent = sent_progress(app, "p2")
    assert [s["stage"] for s in sent] == [s.value for s in stages]
    assert [s["progress"] for s in sent] == sorted(s["progress"] for s in sent)
    assert len(sent) <= 1 + len(stages)


def test_reporter_progress_never_goes_down_and_aclose_flushes(server) -> None:
    base, app = server

    async def body(reporter: ProgressThrottle) -> None:
        reporter.report("p3", Stage.denoising, 0.6)
        reporter.report("p3", Stage.decoding, 0.3)
        await until(lambda: len(sent_progress(app, "p3")) == 2)
        reporter.report("p3", Stage.decoding, 0.7)  # throttled: only aclose sends it

    with_reporter(base, body, interval=10.0)
    assert [(s["stage"], s["progress"]) for s in sent_progress(app, "p3")] == [
        ("denoising", 0.6),
        ("decoding", 0.6),
        ("decoding", 0.7),
    ]


def test_reporter_never_raises_when_the_server_is_down() -> None:
    errors: list[object] = []

    async def body(reporter: ProgressThrottle) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        for i, stage in enumerate(Stage):
            reporter.report("p4", stage, i / 10)
        await asyncio.sleep(0.1)

    with_reporter(f"http://127.0.0.1:{free_port()}", body)
    assert errors == []


def test_reporter_without_client_does_nothing() -> None:
    async def body(reporter: ProgressThrottle) -> None:
        reporter.report("p5", Stage.queued, 0.0)

    with_reporter(None, body)
