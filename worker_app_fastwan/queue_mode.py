"""Queue mode (Salad): FastAPI on PORT; Salad's job-queue binary POSTs each job to /generate.

The model loads in the background while the server already answers (/health says `starting`). One job
at a time: a second /generate gets 429, which Salad retries elsewhere. On SIGTERM the worker drains:
/health and new jobs get 503, the job in flight finishes within DRAIN_TIMEOUT_S, then it exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from worker_app_fastwan.core.devices import SlotDevice, plan_slots
from worker_app_fastwan.core.errors import JobFailure, hide_local_paths
from worker_app_fastwan.core.metrics import Metrics
from worker_app_fastwan.core.protocol import OutputTarget
from worker_app_fastwan.core.schema import ID_RULE, ErrorCode, JobError, JobId, JobInput, JobResult
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.edge.body_guard import BodyGuard, BodyRejected, check_json_body
from worker_app_fastwan.job.runner import Busy, JobRunner, NotReady, RunnerState

log = logging.getLogger(__name__)

# Salad retries 408/429/5xx elsewhere and takes any other status as final.
RETRY_LATER_CODES = {ErrorCode.image_download_failed, ErrorCode.upload_failed, ErrorCode.timeout}
_job_id_adapter = TypeAdapter(JobId)


class ErrorBody(BaseModel):
    error: JobError


class GenerateRequest(JobInput):
    """The job input, plus an optional `job_id` (else the `Salad-Job-Id` header, else a new UUID) and, v1.2,
    an optional output target (the orchestrator's presigned upload, used instead of this worker's storage)."""

    job_id: str | None = None
    output: dict[str, Any] | None = Field(default=None, description="an OutputTarget: docs/protocol.md, 10.1")


class QueueWorker:
    """The state the routes share: the runner, the drain flag and the progress reporter."""

    def __init__(self, settings: Settings, runner: JobRunner, reporter: Any = None) -> None:
        self.settings, self.runner, self.reporter = settings, runner, reporter
        self.draining = False
        self.drained = asyncio.Event()

    def health(self) -> tuple[int, dict[str, Any]]:
        state = self.runner.state
        body: dict[str, Any] = {"status": state.value}
        if self.draining:
            body["status"] = "draining"
        elif state is RunnerState.busy and self.runner.current is not None:
            body["job_id"] = self.runner.current.job_id
        elif state is RunnerState.unhealthy:
            body["reason"] = hide_local_paths(self.runner.unhealthy_reason or "")
        device = self.runner.device
        if device is not None:
            body.update(
                backend=device.backend,
                model=device.model,
                device=device.device,
                gpu={
                    "name": device.name,
                    "memory_used_mb": device.memory_used_mb,
                    "memory_total_mb": device.memory_total_mb,
                },
            )
        ok = not self.draining and state in (RunnerState.ready, RunnerState.busy)
        return (200 if ok else 503), body

    async def drain(self) -> None:
        """Stop taking jobs, let the one in flight finish (or time it out), then let the server exit."""
        if self.draining:
            return
        self.draining = True
        log.info("draining", extra={"drain_timeout_s": self.settings.DRAIN_TIMEOUT_S})
        await self.runner.drain(self.settings.DRAIN_TIMEOUT_S)
        self.drained.set()


def _error(status: int, code: ErrorCode, message: str, retryable: bool) -> JSONResponse:
    body = ErrorBody(error=JobError(code=code, message=message, retryable=retryable))
    return JSONResponse(body.model_dump(mode="json"), status_code=status)


def _failure_status(exc: JobFailure) -> int:
    if not exc.retryable:
        return 422 if exc.code is ErrorCode.invalid_input else 400
    return 503 if exc.code in RETRY_LATER_CODES else 500


async def _read_job(request: Request, salad_job_id: str | None) -> tuple[str, dict[str, Any], OutputTarget | None]:
    """The job id, the body and its output target (v1.2); raises `BodyRejected` or `JobFailure`.

    `BodyGuard` has capped the body (413) and checked it, whatever its type; the checks run again here so
    that this parse never depends on a middleware being installed in front of it.
    """
    raw = await request.body()
    check_json_body(raw)
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise JobFailure(ErrorCode.invalid_input, "body: not valid JSON") from None
    if not isinstance(body, dict):
        raise JobFailure(ErrorCode.invalid_input, "body: the job input must be a JSON object")
    job_id = body.get("job_id") or salad_job_id or str(uuid.uuid4())
    try:
        job_id = _job_id_adapter.validate_python(job_id)
    except ValidationError:
        raise JobFailure(ErrorCode.invalid_input, f"job_id: must be {ID_RULE}") from None
    return job_id, body, _output_target(body.get("output"))


def _output_target(raw: Any) -> OutputTarget | None:
    """The body's `output` (v1.2), checked before any GPU work; a bad one is `invalid_input` naming its field."""
    if raw is None:
        return None
    try:
        return OutputTarget.model_validate(raw)
    except ValidationError as exc:
        err, where = exc.errors()[0], ".".join(str(p) for p in ("output", *exc.errors()[0]["loc"]))
        raise JobFailure(ErrorCode.invalid_input, f"{where}: {err['msg'].removeprefix('Value error, ')}") from None


def build_router(worker: QueueWorker, metrics: Metrics) -> APIRouter:
    router = APIRouter()
    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody} for code in (400, 413, 422, 429, 500, 503)
    }

    @router.get("/", summary="List the endpoints")
    async def index() -> dict[str, Any]:
        return {
            "service": "fastwan-worker",
            "mode": "queue",
            "endpoints": {
                "GET /health": "starting | ready | busy | draining | unhealthy",
                "POST /generate": "run one job",
                "GET /metrics": "Prometheus metrics",
                "GET /docs": "OpenAPI page",
            },
        }

    @router.get("/health", summary="Readiness and liveness", responses={503: {"description": "not ready"}})
    async def health() -> JSONResponse:
        status, body = worker.health()
        return JSONResponse(body, status_code=status)

    @router.post(
        "/generate",
        summary="Run one job and return its result",
        response_model=JobResult,
        responses=error_responses,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
            }
        },
    )
    async def generate(request: Request, salad_job_id: str | None = Header(None, alias="Salad-Job-Id")) -> Response:
        return await _generate(worker, request, salad_job_id)

    @router.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


async def _generate(worker: QueueWorker, request: Request, salad_job_id: str | None) -> Response:
    if worker.draining:
        return _error(503, ErrorCode.internal, "the worker is shutting down; retry elsewhere", True)
    try:
        job_id, body, target = await _read_job(request, salad_job_id)
        result = await worker.runner.run(job_id, body, target=target)
    except Busy as exc:
        return _error(429, ErrorCode.internal, f"busy: {exc}", True)
    except NotReady as exc:
        return _error(503, ErrorCode.internal, hide_local_paths(f"not ready: {exc}"), True)
    except BodyRejected as exc:
        return _error(exc.status, ErrorCode.invalid_input, exc.message, False)
    except JobFailure as exc:
        return _error(_failure_status(exc), exc.code, exc.message, exc.retryable)
    return JSONResponse(result.model_dump(mode="json"))


def create_app(settings: Settings, worker: QueueWorker, metrics: Metrics) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(worker.runner.start())  # HTTP answers while the model loads
        yield
        loading.cancel()
        await worker.runner.close()
        if worker.reporter is not None:
            await worker.reporter.aclose()

    app = FastAPI(title="FastWan video worker (queue mode)", version="1", lifespan=lifespan)
    app.include_router(build_router(worker, metrics))
    app.add_middleware(BodyGuard)  # 64 KiB, nesting, valid Unicode: before any route reads the body
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn that drains on SIGTERM/SIGINT and exits 0, instead of re-raising the signal (exit -15)."""

    def __init__(self, config: uvicorn.Config, worker: QueueWorker) -> None:
        super().__init__(config)
        self.worker = worker

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_signal(self) -> None:
        if self.worker.draining:  # a second signal: stop now
            self.should_exit = True
            return
        asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        await self.worker.drain()
        self.should_exit = True


def one_slot(settings: Settings) -> SlotDevice:
    """Queue mode runs one job at a time on one device (a Salad node has one GPU): the first of GPU_DEVICES."""
    plan = plan_slots(settings.GPU_DEVICES, dict(os.environ))
    if len(plan) > 1:
        log.warning(
            "queue mode runs one slot; using the first of the devices visible (buffer mode runs one per device)",
            extra={"devices": [d.label for d in plan], "using": plan[0].label},
        )
    return plan[0]


def build_worker(settings: Settings) -> tuple[QueueWorker, Metrics]:
    from worker_app_fastwan.job.runner import build_runner
    from worker_app_fastwan.job.storage import make_storage
    from worker_app_fastwan.orchestrator.client import OrchestratorClient
    from worker_app_fastwan.orchestrator.progress import ProgressThrottle

    metrics = Metrics()
    reporter = None
    client = OrchestratorClient.from_settings(settings)
    if client is not None:
        reporter = ProgressThrottle(
            client,
            worker_id=settings.BUFFER_WORKER_ID or "queue-worker",
            min_interval_s=settings.PROGRESS_MIN_INTERVAL_S,
        )
    listeners = [reporter.report_progress] if reporter is not None else []
    runner = build_runner(
        settings, make_storage(settings), device=one_slot(settings), metrics=metrics, listeners=listeners
    )
    return QueueWorker(settings, runner, reporter), metrics


def serve(settings: Settings) -> int:
    async def main() -> None:
        worker, metrics = build_worker(settings)
        app = create_app(settings, worker, metrics)
        config = uvicorn.Config(
            app, host=settings.HOST, port=settings.PORT, log_config=None, timeout_graceful_shutdown=5
        )
        await DrainingServer(config, worker).serve()

    asyncio.run(main())
    return 0
