"""Salad-style dispatch (`--dispatch-to URL`): hand queued jobs, one at a time, to a queue-mode worker.

It mimics the Salad job-queue binary: POST the job input (plus `job_id`) with header `Salad-Job-Id`, and
wait. 408, 429, 5xx or a network error → retry, up to DISPATCH_MAX_ATTEMPTS (4) attempts in all, then
failed with the last error; any other answer is final: 2xx → completed with the body as result, else
failed with the body's `error` (marked not retryable). The dispatcher holds the job like a buffer worker
(worker id `salad-dispatcher`, with an attempt secret of its own, so no worker can report in its name) and
renews its lease while it waits, so a job it held when the stub died goes back to the queue when that lease
runs out. A cancel aborts the request in flight.

The queue-mode worker's answer is read up to the protocol's body cap only (64 KiB; a longer one fails the job
unread) and checked as a buffer worker's report is: a body with invalid Unicode, a non-finite number or too
deep a nesting is no result, and a result must pass `results.ResultRules`.

With an output store (v1.2), each delivery carries an output target of its own in the body's `output`, and a
result on one is checked against the stored object before the job completes (`output_check.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from orchestrator_stub.db import DISPATCHER_ID, Claimed, LeaseState, Store
from orchestrator_stub.leases import cancelled_error
from orchestrator_stub.output_check import OutputMismatch, check_reported, hand_out
from orchestrator_stub.outputs import OutputStore, StorageUnavailable
from orchestrator_stub.results import ResultRefused, ResultRules
from orchestrator_stub.settings import StubSettings
from orchestrator_stub.wakeup import Wakeup
from worker_app_fastwan.core.logs import job_context
from worker_app_fastwan.core.protocol import Capabilities
from worker_app_fastwan.core.schema import ErrorCode, JobError
from worker_app_fastwan.edge.body_guard import MAX_BODY_BYTES, BodyRejected, check_json_body

log = logging.getLogger("orchestrator_stub.dispatcher")

RETRY_STATUSES = frozenset({408, 429})
MAX_MESSAGE_CHARS = 2000  # an error message from the worker, as stored and shown


@dataclass(frozen=True)
class Answer:
    """The worker's answer: its status code, and its body unless that was over the cap (None)."""

    status_code: int
    body: bytes | None

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is missing, not JSON, or breaks the hostile-body rules."""
        if self.body is None:
            raise ValueError(f"the answer is larger than {MAX_BODY_BYTES} bytes")
        try:
            check_json_body(self.body)
        except BodyRejected as exc:
            raise ValueError(exc.message) from None
        return json.loads(self.body)


Outcome = tuple[str, dict[str, Any] | None, dict[str, Any] | None]  # (status, result, error)


class RetryableAnswer(Exception):
    """An attempt Salad would retry; carries the error the job fails with if it was the last."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


class Dispatcher:
    def __init__(
        self,
        store: Store,
        settings: StubSettings,
        wakeup: Wakeup,
        rules: ResultRules,
        outputs: OutputStore | None = None,
    ) -> None:
        assert settings.DISPATCH_TO, "DISPATCH_TO is required"
        self._store = store
        self._rules = rules
        self._outputs = outputs
        self._settings = settings
        self._url = settings.DISPATCH_TO
        self._wakeup = wakeup
        self._renew_every = min(store.lease_seconds / 3, 1.0)

    async def run(self) -> None:
        timeout = httpx.Timeout(self._settings.DISPATCH_TIMEOUT_S, connect=10.0)
        async with httpx.AsyncClient(timeout=timeout) as client:
            log.info("dispatching queued jobs", extra={"url": self._url})
            while True:
                try:
                    job = await asyncio.to_thread(
                        self._store.claim, DISPATCHER_ID, "salad", Capabilities(), with_secret=True
                    )
                except Exception:
                    log.exception("dispatcher claim failed")
                    job = None
                if job is None:
                    await self._wakeup.wait(self._settings.DISPATCH_POLL_S)
                    continue
                with job_context(job.job_id):
                    try:
                        await self._handle(client, job)
                    except Exception:  # the job keeps its lease until it runs out, then goes back to the queue
                        log.exception("dispatch crashed")

    async def _handle(self, client: httpx.AsyncClient, job: Claimed) -> None:
        secret = job.attempt_secret
        await asyncio.to_thread(
            self._store.apply_status, job.job_id, DISPATCHER_ID, "running", None, None, secret=secret
        )
        delivery = asyncio.create_task(self._deliver(client, job))
        watch = asyncio.create_task(self._watch_lease(job.job_id))
        try:
            await asyncio.wait({delivery, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (delivery, watch):
                task.cancel()
            await asyncio.gather(delivery, watch, return_exceptions=True)
        if not delivery.cancelled():
            status, result, error = delivery.result()
            if result is not None:
                status, result, error = await asyncio.to_thread(self._checked, job, result)
        elif not watch.cancelled() and watch.result() is LeaseState.cancel:
            status, result, error = "failed", None, cancelled_error()
        else:
            log.warning("dispatcher lost the lease; dropping the job")
            return
        # Final even when retryable: _deliver already made Salad's re-deliveries, and the stub does not add its own.
        outcome = await asyncio.to_thread(
            self._store.apply_status,
            job.job_id,
            DISPATCHER_ID,
            status,
            result,
            error,
            secret=secret,
            requeue_retryable=False,
        )
        log.info("dispatch finished", extra={"status": status, "outcome": outcome.value})

    def _checked(self, job: Claimed, result: dict[str, Any]) -> Outcome:
        """The worker's answer as a result (`output_check.check_reported`), else the job's failure."""
        try:
            checked = check_reported(self._store, self._rules, self._outputs, job.job_id, job.attempt, result)
        except ResultRefused as exc:
            message = f"the worker's answer was refused: {exc}"
            return "failed", None, _error(ErrorCode.internal, message[:MAX_MESSAGE_CHARS], retryable=False)
        except (OutputMismatch, StorageUnavailable) as exc:
            message = f"the result could not be checked against its output target: {exc}"
            return "failed", None, _error(ErrorCode.upload_failed, message[:MAX_MESSAGE_CHARS], retryable=True)
        return "completed", checked, None

    async def _watch_lease(self, job_id: str) -> LeaseState:
        """Renew the lease while the request is in flight; returns when cancelled or lost."""
        while True:
            await asyncio.sleep(self._renew_every)
            state = await asyncio.to_thread(self._store.renew_lease, job_id, DISPATCHER_ID)
            if state is not LeaseState.held:
                return state

    async def _deliver(self, client: httpx.AsyncClient, job: Claimed) -> Outcome:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._settings.DISPATCH_MAX_ATTEMPTS),
            wait=wait_exponential(
                multiplier=self._settings.DISPATCH_RETRY_BASE_S, max=self._settings.DISPATCH_RETRY_MAX_S
            ),
            retry=retry_if_exception_type(RetryableAnswer),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._post(client, job, attempt.retry_state.attempt_number)
        except RetryableAnswer as exc:
            return "failed", None, exc.error
        return _final_outcome(response)

    async def _post(self, client: httpx.AsyncClient, job: Claimed, number: int) -> Answer:
        """One attempt; raises RetryableAnswer on what Salad would retry."""
        body = {**job.input, "job_id": job.job_id}
        if self._outputs is not None:  # a target per delivery: a late delivery's upload lands beside, not over
            target = await asyncio.to_thread(hand_out, self._store, self._outputs, job.job_id, job.attempt, number)
            body["output"] = target.model_dump(mode="json")
        try:
            async with client.stream("POST", self._url, json=body, headers={"Salad-Job-Id": job.job_id}) as streamed:
                response = Answer(streamed.status_code, await _read_capped(streamed, MAX_BODY_BYTES))
        except httpx.TransportError as exc:
            message = f"worker unreachable: {type(exc).__name__}: {exc}"
            await self._record(job.job_id, number, None, message)
            raise RetryableAnswer(_error(ErrorCode.internal, message, retryable=True)) from exc
        retry = response.status_code in RETRY_STATUSES or response.status_code >= 500
        error = None if response.is_success else _error_from_body(response, retryable=retry)
        await self._record(job.job_id, number, response.status_code, error["message"] if error else None)
        if retry and error is not None:
            raise RetryableAnswer(error)
        return response

    async def _record(self, job_id: str, number: int, status_code: int | None, error: str | None) -> None:
        log.info("dispatch attempt", extra={"attempt": number, "status_code": status_code, "error": error})
        await asyncio.to_thread(self._store.add_dispatch_attempt, job_id, number, status_code, error)


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes | None:
    """The (decoded) body, or None as soon as it passes `max_bytes`: the rest is never read."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            return None
    return bytes(body)


def _final_outcome(response: Answer) -> Outcome:
    """The answer as the job's outcome; a completed one's result is checked afterwards (`Dispatcher._checked`)."""
    if not response.is_success:
        return "failed", None, _error_from_body(response, retryable=False)
    try:
        result = response.json()
    except ValueError as exc:
        message = f"worker answered HTTP {response.status_code} with a body that is not a result: {exc}"
        return "failed", None, _error(ErrorCode.internal, message[:MAX_MESSAGE_CHARS], retryable=False)
    if not isinstance(result, dict):
        message = f"worker answered HTTP {response.status_code} with a body that is not a JSON object"
        return "failed", None, _error(ErrorCode.internal, message, retryable=False)
    return "completed", result, None


def _error_from_body(response: Answer, *, retryable: bool) -> dict[str, Any]:
    """The worker's `{"error": …}` if it sent a valid one, else one made from the status code."""
    try:
        error = JobError.model_validate(response.json()["error"]).model_dump(mode="json")
        error["message"] = error["message"][:MAX_MESSAGE_CHARS]
        return error | {"retryable": error["retryable"] and retryable}
    except (ValueError, KeyError, TypeError, ValidationError):
        code = ErrorCode.invalid_input if response.status_code in (400, 422) else ErrorCode.internal
        return _error(code, f"worker answered HTTP {response.status_code}", retryable=retryable)


def _error(code: ErrorCode, message: str, *, retryable: bool) -> dict[str, Any]:
    return JobError(code=code, message=message, retryable=retryable).model_dump(mode="json")
