"""The worker-facing routes of docs/protocol.md (v1.2): claim, heartbeat, status, progress.

The key check is `auth.InternalKeyMiddleware`. Handlers are plain `def`, so FastAPI runs them in its
thread pool and database work (and the output store's checks) never block the event loop; the claim is the
exception: it may wait for a job (`claim_wait.py`), and a waiting claim must not hold a thread, so it is async
and sends each database call to the thread pool itself. Every worker holds
the same key, so the key proves only "a worker": a claim's attempt secret (v1.2) proves "the worker holding
this attempt", and a completed job's result is checked (`results.py`) before anyone else gets to see it. With
an output store (`outputs.py`), a claim from a worker that can use one carries an output target, and a
completed status whose result is on one is accepted only once the stored object matches it (`output_check.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from orchestrator_stub.claim_wait import ClaimWaiters, wait_for_job
from orchestrator_stub.db import ClaimAnswer, StatusOutcome, Store
from orchestrator_stub.db.base import MAX_MESSAGE_CHARS, clip
from orchestrator_stub.output_check import OutputMismatch, check_reported, hand_out
from orchestrator_stub.outputs import OutputStore, StorageUnavailable
from orchestrator_stub.results import ResultRefused, ResultRules, refused_error
from orchestrator_stub.views import iso
from worker_app_fastwan.core.protocol import (
    QUARANTINE_HEADER,
    WAIT_HEADER,
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
MAX_TOLD = 10_000  # quarantine refusals remembered for logging once; past that the memory starts over


SECRET_NEEDED = (
    "this orchestrator hands jobs only to workers that prove they hold them: protocol v1.2's"
    " wants_attempt_secret (ATTEMPT_SECRET_REQUIRED)"
)


def build_router(
    store: Store,
    rules: ResultRules,
    outputs: OutputStore | None = None,
    *,
    secret_required: bool = False,
    waiters: ClaimWaiters | None = None,
    max_wait_s: float = 0.0,
) -> APIRouter:
    router = APIRouter(prefix="/internal", tags=["internal (X-Internal-Api-Key)"])
    told: dict[str, float] = {}  # worker id: the quarantine end its refusal was logged for (once each)

    async def now() -> float:
        return await run_in_threadpool(store.now)

    @router.post(
        "/buffer/jobs/claim",
        response_model=ClaimResponse,
        responses={
            204: {"description": f"nothing this worker can run is queued ({WAIT_HEADER}: how long it waited)"},
            403: {"description": "ATTEMPT_SECRET_REQUIRED"},
        },
    )
    async def claim(body: ClaimRequest, request: Request) -> Response:
        if secret_required and not body.wants_attempt_secret:
            raise HTTPException(403, SECRET_NEEDED)
        # A v1.2 worker may ask to wait (`wait_s`); one that does not (older) is answered at once, as before.
        granted = min(body.wait_s, max_wait_s) if waiters is not None else 0.0

        async def claim_once() -> ClaimAnswer:
            return await run_in_threadpool(
                store.claim_for,
                body.worker_id,
                body.gpu_class,
                body.capabilities,
                with_secret=body.wants_attempt_secret,
            )

        if granted > 0 and waiters is not None:
            answer = await wait_for_job(waiters, body.capabilities, claim_once, now, granted)
        else:
            answer = await claim_once()
        job = answer.job
        if job is not None and granted > 0 and await request.is_disconnected():
            # The worker gave up waiting (or is stopping): the job goes back as it was, for the next claim.
            await run_in_threadpool(store.release, job.job_id, body.worker_id, job.attempt)
            job = None
        if job is None:
            headers = {WAIT_HEADER: f"{granted:g}"}
            if answer.quarantined_until is not None:
                headers[QUARANTINE_HEADER] = _quarantine_note(body.worker_id, answer, told)
            return Response(status_code=204, headers=headers)
        output = None
        if outputs is not None and body.capabilities.output_target:
            output = await run_in_threadpool(hand_out, store, outputs, job.job_id, job.attempt)
        claimed = ClaimedJob(
            job_id=job.job_id,
            input=job.input,
            attempt=job.attempt,
            lease_seconds=store.lease_seconds,
            attempt_secret=job.attempt_secret,
            output=output,
        )
        # exclude_none: a claim without a secret or a target looks exactly like v1.1's.
        return JSONResponse(ClaimResponse(job=claimed).model_dump(mode="json", exclude_none=True))

    @router.post("/buffer/workers/{worker_id}/heartbeat", responses={403: {}})
    def heartbeat(body: HeartbeatRequest, worker_id: str = WORKER_ID) -> HeartbeatResponse:
        cancel = store.heartbeat(worker_id, body)
        if cancel is None:
            log.warning("heartbeat refused: attempt secret missing or wrong", extra={"worker_id": worker_id})
            raise HTTPException(403, f"this heartbeat names a job worker {worker_id} holds, without its attempt_secret")
        return HeartbeatResponse(cancel_job_ids=cancel)

    @router.post("/buffer/jobs/{job_id}/status", responses={403: {}, 409: {}, 422: {}})
    def status(body: StatusUpdate, job_id: str = JOB_ID) -> dict[str, Any]:
        result, error = _final_payload(body)
        refused: str | None = None
        if result is not None:
            try:
                result = check_reported(store, rules, outputs, job_id, body.attempt, result)
            except StorageUnavailable as exc:
                raise HTTPException(503, f"the output store cannot be checked now: {exc}") from None
            except (ResultRefused, OutputMismatch) as exc:
                # Reported by the holder, it ends this attempt as a retryable failure (another worker may store
                # the video properly); a report that proves nothing is refused below like any other.
                code = "upload_failed" if isinstance(exc, OutputMismatch) else "internal"
                refused, result, error = str(exc), None, refused_error(str(exc), code)
        status = "failed" if refused else body.status
        outcome = store.apply_status(
            job_id, body.worker_id, status, result, error, attempt=body.attempt, secret=body.attempt_secret
        )
        log.info(
            "status report",
            extra={
                "job_id": job_id,
                "worker_id": body.worker_id,
                "status": body.status,
                "attempt": body.attempt,
                "outcome": outcome.value,
                "refused": refused,
            },
        )
        if outcome is StatusOutcome.forbidden:
            raise HTTPException(403, f"job {job_id}'s attempt was claimed with an attempt_secret; this status lacks it")
        if outcome is StatusOutcome.missing:
            # 409, not 404: the protocol's one answer for "not yours", so the worker drops the report (its
            # outbox would keep a 404'd one forever, e.g. after this stub's database was deleted).
            raise HTTPException(409, f"unknown job {job_id}")
        if outcome is StatusOutcome.stale:
            current = store.current_attempt(job_id)
            raise HTTPException(409, f"job {job_id} is on attempt {current}; this status is for attempt {body.attempt}")
        if outcome is StatusOutcome.conflict:
            raise HTTPException(409, f"job {job_id} is not held by worker {body.worker_id}")
        if refused:
            raise HTTPException(422, refused)
        return {"job_id": job_id, "status": body.status}

    @router.post("/videogen/jobs/{job_id}/progress", status_code=204, response_class=Response)
    def progress(body: ProgressUpdate, job_id: str = JOB_ID) -> Response:
        # Best effort, as the protocol says: a job the stub does not know (a Salad job id in queue mode), no
        # longer runs, or that another worker holds now is acknowledged and ignored, so no worker ever retries.
        if not store.record_progress(job_id, body):
            log.debug("progress ignored", extra={"job_id": job_id, "worker_id": body.worker_id})
        return Response(status_code=204)

    return router


def _quarantine_note(worker_id: str, answer: ClaimAnswer, told: dict[str, float]) -> str:
    """The refusal's reason (a header, and the stub's log once per quarantine and worker)."""
    until = answer.quarantined_until or 0.0
    note = f"{answer.streak} failed attempts in a row; no jobs until {iso(until)}"
    if told.get(worker_id) != until:
        if len(told) > MAX_TOLD:
            told.clear()
        told[worker_id] = until
        log.warning("claim refused: worker quarantined", extra={"worker_id": worker_id, "reason": note})
    return note


def _final_payload(body: StatusUpdate) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The result/error to store; a final status without its object is a worker bug, refused with 422."""
    if body.status == "completed" and body.result is None:
        raise HTTPException(422, "result: is required when status is completed")
    if body.status == "failed" and body.error is None:
        raise HTTPException(422, "error: is required when status is failed")
    result = body.result.model_dump(mode="json") if body.status == "completed" and body.result else None
    error = body.error.model_dump(mode="json") if body.status == "failed" and body.error else None
    if error is not None:  # shown to every client: as long as a person reads, no longer
        error["message"] = clip(error["message"], MAX_MESSAGE_CHARS)
    return result, error
