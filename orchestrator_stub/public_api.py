"""The public /v1 API for a person (or script) on the box: submit, look at, list and cancel jobs.

There is no authentication here unless STUB_PASSWORD is set (`password.py`): the stub listens on 127.0.0.1
by default, and whoever can reach this API can submit GPU work. Web pages cannot (`browser_guard.py`).
At most MAX_QUEUED_JOBS jobs wait at a time: past that a submission is 429, so a flood costs bounded disk.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from orchestrator_stub.db import (
    DEFAULT_NOTIFY_EVENTS,
    NOTIFY_EVENTS,
    CancelOutcome,
    IdempotencyConflict,
    QueueFull,
    Store,
)
from orchestrator_stub.settings import StubSettings
from orchestrator_stub.views import job_view, load_job_view, worker_view
from orchestrator_stub.webhooks import check_notify_events, check_notify_url
from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ID_PATTERN, ErrorCode, JobInput
from worker_app_fastwan.edge.job_input import parse_job_input

JOB_ID = Path(pattern=ID_PATTERN, max_length=128)
SUBMISSION = JobInput.model_json_schema() | {"title": "Submission"}
SUBMISSION["properties"] = SUBMISSION["properties"] | {
    "notify_url": {"type": "string", "maxLength": 2048, "description": "where the job's webhooks are POSTed"},
    "notify_events": {
        "type": "array",
        "items": {"enum": list(NOTIFY_EVENTS)},
        "minItems": 1,
        "default": list(DEFAULT_NOTIFY_EVENTS),
        "description": "which webhooks to send (Standard Webhooks event types); needs notify_url",
    },
}
MAX_OFFSET = 10**9  # far past any real listing, and far inside SQLite's 64-bit integers


def build_router(store: Store, settings: StubSettings) -> APIRouter:
    router = APIRouter(tags=["public"])

    @router.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.post(
        "/v1/jobs",
        status_code=201,
        responses={200: {"description": "Idempotency-Key replay"}, 422: {}, 429: {"description": "queue full"}},
        # The body is parsed by hand (to name the field in one error shape); the schema still documents it.
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": SUBMISSION}}}},
    )
    def submit(
        payload: Annotated[Any, Body(description="the job input, plus an optional notify_url")],
        idempotency_key: str | None = Header(default=None, min_length=1, max_length=255),
    ) -> JSONResponse:
        try:
            job, notify_url, notify_events = _parse_submission(payload, settings)
        except JobFailure as exc:
            return JSONResponse({"error": exc.to_error().model_dump(mode="json")}, status_code=422)
        try:
            job_id, created = store.create_job(
                job,
                notify_url=notify_url,
                notify_events=notify_events,
                idempotency_key=idempotency_key,
                fingerprint=_fingerprint(job, notify_url, notify_events),
            )
        except IdempotencyConflict:
            raise HTTPException(422, "Idempotency-Key: was already used with a different body") from None
        except QueueFull as exc:
            message = (
                f"the queue is full: {exc.limit} jobs are waiting (MAX_QUEUED_JOBS); submit again once some have"
                " run, or cancel some"
            )
            error = {"code": "queue_full", "message": message, "retryable": True}
            return JSONResponse({"error": error}, status_code=429, headers={"Retry-After": "30"})
        return JSONResponse(
            {"job_id": job_id}, status_code=201 if created else 200, headers={"Location": f"/v1/jobs/{job_id}"}
        )

    @router.get("/v1/jobs")
    def list_jobs(
        status: Literal["queued", "claimed", "running", "completed", "failed"] | None = None,
        limit: int = Query(default=50, ge=1, le=500),
        offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
    ) -> dict[str, Any]:
        jobs, total = store.list_jobs(status, limit, offset)
        return {"jobs": [job_view(store, job) for job in jobs], "total": total, "limit": limit, "offset": offset}

    @router.get("/v1/jobs/{job_id}", responses={404: {}})
    def get_job(job_id: str = JOB_ID) -> dict[str, Any]:
        return _view_or_404(store, job_id)

    @router.post("/v1/jobs/{job_id}/cancel", responses={202: {"description": "cancel requested"}, 404: {}, 409: {}})
    def cancel(job_id: str = JOB_ID) -> JSONResponse:
        outcome = store.cancel(job_id)
        if outcome is CancelOutcome.missing:
            raise HTTPException(404, f"unknown job {job_id}")
        if outcome is CancelOutcome.final:
            raise HTTPException(409, f"job {job_id} is already final")
        # 200: cancelled now (it was queued); 202: the worker holding it will stop at its next safe point.
        code = 200 if outcome is CancelOutcome.cancelled else 202
        return JSONResponse(_view_or_404(store, job_id), status_code=code)

    @router.get("/v1/queue")
    def queue(limit: int = Query(default=100, ge=1, le=1000)) -> dict[str, Any]:
        workers, total = store.workers(limit)
        return {"counts": store.counts(), "workers": [worker_view(w) for w in workers], "workers_total": total}

    return router


def _view_or_404(store: Store, job_id: str) -> dict[str, Any]:
    view = load_job_view(store, job_id)
    if view is None:
        raise HTTPException(404, f"unknown job {job_id}")
    return view


def _parse_submission(payload: Any, settings: StubSettings) -> tuple[JobInput, str | None, tuple[str, ...] | None]:
    """The validated job input, notify_url and notify_events; raises JobFailure(invalid_input) naming the field."""
    job = parse_job_input(payload)
    notify_url, notify_events = payload.get("notify_url"), payload.get("notify_events")
    events: tuple[str, ...] | None = None
    if notify_events is not None:
        try:
            events = check_notify_events(notify_events)
        except ValueError as exc:
            raise JobFailure(ErrorCode.invalid_input, f"notify_events: {exc}") from None
        if notify_url is None:
            raise JobFailure(ErrorCode.invalid_input, "notify_events: needs a notify_url to send them to")
    if notify_url is None:
        return job, None, None
    try:
        check_notify_url(
            notify_url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE, can_sign=settings.WEBHOOK_SECRET is not None
        )
    except ValueError as exc:
        raise JobFailure(ErrorCode.invalid_input, f"notify_url: {exc}") from None
    return job, notify_url, events


def _fingerprint(job: JobInput, notify_url: str | None, notify_events: tuple[str, ...] | None) -> str:
    """What makes two submissions "the same" for an Idempotency-Key: the validated input, the URL and the events
    (the default ones named or not are the same)."""
    events = sorted(notify_events or DEFAULT_NOTIFY_EVENTS) if notify_url else None
    request: dict[str, Any] = {"input": job.model_dump(mode="json"), "notify_url": notify_url}
    if events is not None and events != sorted(DEFAULT_NOTIFY_EVENTS):  # older fingerprints stay as they were
        request["notify_events"] = events
    canonical = json.dumps(request, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
