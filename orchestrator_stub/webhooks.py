"""Webhooks: when a job with a `notify_url` becomes final, POST its job object there.

Delivery state lives in the jobs table (`webhook_state`: pending → delivered | gave_up) and every attempt
in `webhook_attempts`, so a delivery interrupted by a restart resumes with the attempts it has left.
Delivery runs in its own task, never inside a request: a slow receiver never delays a worker's call.
Each delivery is at-least-once; receivers can de-duplicate on the `X-Stub-Job-Id` header.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from orchestrator_stub.db import Store
from orchestrator_stub.settings import StubSettings
from orchestrator_stub.views import load_job_view
from orchestrator_stub.wakeup import Wakeup

log = logging.getLogger("orchestrator_stub.webhooks")


class WebhookFailed(Exception):
    """One attempt got no 2xx; tenacity retries on it."""


class WebhookSender:
    def __init__(self, store: Store, settings: StubSettings, wakeup: Wakeup) -> None:
        self._store = store
        self._settings = settings
        self._wakeup = wakeup
        self._inflight: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Start a delivery task for every pending webhook; woken on each final job, and polls as a fallback."""
        async with httpx.AsyncClient(timeout=self._settings.WEBHOOK_TIMEOUT_S) as client:
            try:
                while True:
                    await self._start_pending(client)
                    await self._wakeup.wait(self._settings.WEBHOOK_SCAN_S)
            finally:
                for task in self._inflight.values():
                    task.cancel()
                await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def _start_pending(self, client: httpx.AsyncClient) -> None:
        try:
            pending = await asyncio.to_thread(self._store.pending_webhooks)
        except Exception:
            log.exception("could not list pending webhooks")
            return
        for job_id in pending:
            if job_id not in self._inflight:
                task = asyncio.create_task(self._deliver(client, job_id))
                self._inflight[job_id] = task
                task.add_done_callback(lambda _t, j=job_id: self._inflight.pop(j, None))

    async def _deliver(self, client: httpx.AsyncClient, job_id: str) -> None:
        try:
            # Checked again here: a scan may have listed the job just before an earlier delivery finished.
            url = await asyncio.to_thread(self._store.pending_webhook_url, job_id)
            payload = await asyncio.to_thread(load_job_view, self._store, job_id)
            if url is None or payload is None:
                return
            state = await self._attempts(client, job_id, url, payload, len(payload["webhook_attempts"]))
            await asyncio.to_thread(self._store.set_webhook_state, job_id, state)
        except asyncio.CancelledError:
            raise
        except Exception:  # the row stays pending, so the next scan tries again
            log.exception("webhook delivery crashed", extra={"job_id": job_id})
            await asyncio.sleep(self._settings.WEBHOOK_SCAN_S)

    async def _attempts(
        self, client: httpx.AsyncClient, job_id: str, url: str, payload: dict[str, Any], done: int
    ) -> str:
        """Try the attempts left (of WEBHOOK_MAX_ATTEMPTS) with exponential backoff; returns the final state."""
        left = self._settings.WEBHOOK_MAX_ATTEMPTS - done
        if left <= 0:
            return "gave_up"
        retrying = AsyncRetrying(
            stop=stop_after_attempt(left),
            wait=wait_exponential(
                multiplier=self._settings.WEBHOOK_BASE_DELAY_S, max=self._settings.WEBHOOK_MAX_DELAY_S
            ),
            retry=retry_if_exception_type(WebhookFailed),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post(client, job_id, url, payload, done + attempt.retry_state.attempt_number)
        except WebhookFailed:
            log.warning("webhook gave up", extra={"job_id": job_id, "attempts": self._settings.WEBHOOK_MAX_ATTEMPTS})
            return "gave_up"
        return "delivered"

    async def _post(
        self, client: httpx.AsyncClient, job_id: str, url: str, payload: dict[str, Any], number: int
    ) -> None:
        headers = {"X-Stub-Job-Id": job_id, "X-Stub-Webhook-Attempt": str(number)}
        status_code: int | None = None
        try:
            response = await client.post(url, json=payload, headers=headers)
            status_code = response.status_code
            error = None if response.is_success else f"HTTP {status_code}"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = f"{type(exc).__name__}: {exc}"
        # The URL may carry a secret token, so only its host is logged.
        log.info(
            "webhook attempt",
            extra={
                "job_id": job_id,
                "attempt": number,
                "host": urlsplit(url).hostname,
                "status_code": status_code,
                "error": error,
            },
        )
        await asyncio.to_thread(self._store.add_webhook_attempt, job_id, number, status_code, error, error is None)
        if error is not None:
            raise WebhookFailed(error)
