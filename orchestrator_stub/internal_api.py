"""The worker-facing routes of docs/protocol.md (v1.2): claim, heartbeat, status, progress.

The key check is `auth.InternalKeyMiddleware`. Handlers are plain `def`, so FastAPI runs them in its
thread pool and SQLite work (and the output store's checks) never block the event loop. With an output store
(`outputs.py`), a claim from a worker that can use one carries an output target, and a completed status whose
result is on one is accepted only once the stored object matches it (`output_check.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Response
from fastapi.responses import JSONResponse

from orchestrator_stub.db import StatusOutcome, Store
from orchestrator_stub.output_check import OutputMismatch, check_result
from orchestrator_stub.outputs import OutputStore, StorageUnavailable
from worker_app_fastwan.core.protocol import (
    ClaimedJob,
    ClaimRequest,
    ClaimResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    ProgressUpdate,
    StatusUpdate,
)
from worker_app_fastwan.core.schema import ID_PATTERN

log = logging.getLogger("orchestrator_stub.internal")

JOB_ID = Path(pattern=ID_PATTERN, max_length=128)
WORKER_ID = Path(pattern=ID_PATTERN, max_length=128)


def build_router(store: Store, outputs: OutputStore | None = None) -> APIRouter:
    router = APIRouter(prefix="/internal", tags=["internal (X-Internal-Api-Key)"])

    @router.post("/buffer/jobs/claim", response_model=ClaimResponse, responses={204: {"description": "nothing queued"}})
    def claim(body: ClaimRequest) -> Response:
        job = store.claim(body.worker_id, body.gpu_class, body.capabilities)
        if job is None:
            return Response(status_code=204)
        output = None
        if outputs is not None and body.capabilities.output_target:
            issued = outputs.issue(job.job_id, job.attempt)
            poster_key = issued.target.poster.storage_key if issued.target.poster else None
            store.add_output_target(
                job.job_id, job.attempt, issued.target.video.storage_key, poster_key, issued.expires_at
            )
            output = issued.target
        claimed = ClaimedJob(
            job_id=job.job_id, input=job.input, attempt=job.attempt, lease_seconds=store.lease_seconds, output=output
        )
        return JSONResponse(ClaimResponse(job=claimed).model_dump(mode="json"))

    @router.post("/buffer/workers/{worker_id}/heartbeat")
    def heartbeat(body: HeartbeatRequest, worker_id: str = WORKER_ID) -> HeartbeatResponse:
        return HeartbeatResponse(cancel_job_ids=store.heartbeat(worker_id, body))

    @router.post("/buffer/jobs/{job_id}/status", responses={409: {}, 422: {}})
    def status(body: StatusUpdate, job_id: str = JOB_ID) -> dict[str, Any]:
        result, error = _final_payload(body)
        if result is not None and outputs is not None:
            result = _checked(store, outputs, job_id, body, result)
        outcome = store.apply_status(job_id, body.worker_id, body.status, result, error, attempt=body.attempt)
        log.info(
            "status report",
            extra={
                "job_id": job_id,
                "worker_id": body.worker_id,
                "status": body.status,
                "attempt": body.attempt,
                "outcome": outcome.value,
            },
        )
        if outcome is StatusOutcome.missing:
            # 409, not 404: the protocol's one answer for "not yours", so the worker drops the report (its
            # outbox would keep a 404'd one forever, e.g. after this stub's database was deleted).
            raise HTTPException(409, f"unknown job {job_id}")
        if outcome is StatusOutcome.stale:
            current = store.current_attempt(job_id)
            raise HTTPException(409, f"job {job_id} is on attempt {current}; this status is for attempt {body.attempt}")
        if outcome is StatusOutcome.conflict:
            raise HTTPException(409, f"job {job_id} is not held by worker {body.worker_id}")
        return {"job_id": job_id, "status": body.status}

    @router.post("/videogen/jobs/{job_id}/progress", status_code=204, response_class=Response)
    def progress(body: ProgressUpdate, job_id: str = JOB_ID) -> Response:
        # Best effort, as the protocol says: a job the stub does not know (a Salad job id in queue mode), no
        # longer runs, or that another worker holds now is acknowledged and ignored, so no worker ever retries.
        if not store.record_progress(job_id, body):
            log.debug("progress ignored", extra={"job_id": job_id, "worker_id": body.worker_id})
        return Response(status_code=204)

    return router


def _checked(
    store: Store, outputs: OutputStore, job_id: str, body: StatusUpdate, result: dict[str, Any]
) -> dict[str, Any]:
    """The result, once what it says matches the object on its output target; a mismatch fails the attempt
    (retryable, so the job goes back to the queue) and is answered 422, the store being down 503."""
    try:
        return check_result(store, outputs, job_id, body.attempt, result)
    except StorageUnavailable as exc:
        raise HTTPException(503, f"the output store cannot be checked now: {exc}") from None
    except OutputMismatch as exc:
        error = {"code": "upload_failed", "message": str(exc), "retryable": True}
        outcome = store.apply_status(job_id, body.worker_id, "failed", None, error, attempt=body.attempt)
        log.warning("result refused", extra={"job_id": job_id, "error": str(exc), "outcome": outcome.value})
        raise HTTPException(422, f"result: {exc}") from None


def _final_payload(body: StatusUpdate) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The result/error to store; a final status without its object is a worker bug, refused with 422."""
    if body.status == "completed" and body.result is None:
        raise HTTPException(422, "result: is required when status is completed")
    if body.status == "failed" and body.error is None:
        raise HTTPException(422, "error: is required when status is failed")
    result = body.result.model_dump(mode="json") if body.status == "completed" and body.result else None
    error = body.error.model_dump(mode="json") if body.status == "failed" and body.error else None
    return result, error
