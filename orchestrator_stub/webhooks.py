"""Webhooks: when a job with a `notify_url` becomes final, POST its job object there, signed.

Delivery state lives in the jobs table (`webhook_state`: pending → delivered | gave_up) and every attempt
in `webhook_attempts`, so a delivery interrupted by a restart resumes with the attempts it has left.
Delivery runs in its own task, never inside a request: a slow receiver never delays a worker's call.
Each delivery is at-least-once; receivers can de-duplicate on the `X-Stub-Job-Id` header. With several
replicas on one database, a replica claims a pending delivery before it starts (`Store.claim_webhooks`) and
renews that claim while it delivers, so each delivery has one sender; one whose replica died is taken over by
another once its lease (`LEASE_S`) runs out, with the attempts it has left.

A `notify_url` comes from whoever can reach the public API, so the stub treats it as the worker treats an
image URL (`worker_app_fastwan.edge.outbound`, one rule): only public addresses, pinned, no redirects, unless
`WEBHOOK_ALLOW_PRIVATE`. Each attempt's error stays in the stub's log and database; the public job view
shows only whether an attempt succeeded, or the stub would be a port and DNS scanner for anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from orchestrator_stub.db import Store
from orchestrator_stub.settings import StubSettings
from orchestrator_stub.views import load_job_view
from orchestrator_stub.wakeup import Wakeup
from worker_app_fastwan.edge.addresses import forbidden_address
from worker_app_fastwan.edge.outbound import NonPublicAddress, UnresolvableHost, pinned_request, vet_host

log = logging.getLogger("orchestrator_stub.webhooks")

SIGNATURE_HEADER = "X-Stub-Signature"
MAX_URL_CHARS = 2048
LEASE_S = 15.0  # a delivery's claim: renewed every third of it; a dead replica's is taken over after it


def replica_id() -> str:
    """This process among the replicas: host, pid and a random part (a pid can come back after a restart)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(3)}"


def sign(secret: str, body: bytes) -> str:
    """The `X-Stub-Signature` value: `sha256=` and the hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def check_notify_url(value: object, *, allow_private: bool, can_sign: bool) -> str:
    """The notify_url if it can be delivered to; else ValueError with the reason (without the URL itself).

    A host name is resolved only at delivery (answering here whether a name resolves would be a DNS oracle);
    an address literal or `localhost` is judged now.
    """
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
        raise ValueError(f"must be an http(s) URL of at most {MAX_URL_CHARS} characters")
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ValueError("must be an http(s) URL with a host") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an http(s) URL with a host")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ValueError(f"port must be 1-65535 (got {url.port})")
    if not allow_private and _private_host(url.host):
        raise ValueError("must be a public host (this stub does not allow private webhook targets)")
    if not can_sign:
        raise ValueError("this stub has no WEBHOOK_SECRET to sign webhooks with; set one to use notify_url")
    return value


def _private_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return forbidden_address(ipaddress.ip_address(host))
    except ValueError:
        return False  # a name: vetted at delivery


class WebhookFailed(Exception):
    """One attempt got no 2xx; tenacity retries on it."""


class WebhookSender:
    def __init__(self, store: Store, settings: StubSettings, wakeup: Wakeup, *, lease_s: float = LEASE_S) -> None:
        self._store = store
        self._settings = settings
        self._wakeup = wakeup
        self._owner = replica_id()
        self._lease_s = lease_s
        self._inflight: dict[str, asyncio.Task[None]] = {}
        # Submissions with a notify_url are refused without a secret, so a pending webhook always has one;
        # an empty one here only signs what an older database still had pending.
        self._secret = settings.WEBHOOK_SECRET.get_secret_value() if settings.WEBHOOK_SECRET else ""

    async def run(self) -> None:
        """Start a delivery task for every pending webhook; woken on each final job, and polls as a fallback."""
        if not self._store.db.postgres:  # one process per file: a claim found at start is from before a restart
            await asyncio.to_thread(self._store.release_webhooks, None)
        async with httpx.AsyncClient(timeout=self._settings.WEBHOOK_TIMEOUT_S) as client:
            try:
                while True:
                    await self._start_pending(client)
                    await self._wakeup.wait(self._settings.WEBHOOK_SCAN_S)
            finally:
                for task in self._inflight.values():
                    task.cancel()
                await asyncio.gather(*self._inflight.values(), return_exceptions=True)
                with contextlib.suppress(Exception):  # stopping: another replica takes them at once, not later
                    await asyncio.to_thread(self._store.release_webhooks, self._owner)

    async def _start_pending(self, client: httpx.AsyncClient) -> None:
        try:
            pending = await asyncio.to_thread(self._store.claim_webhooks, self._owner, self._lease_s)
        except Exception:
            log.exception("could not claim pending webhooks")
            return
        for job_id in pending:
            if job_id not in self._inflight:
                task = asyncio.create_task(self._held(client, job_id))
                self._inflight[job_id] = task
                task.add_done_callback(functools.partial(self._forget, job_id))

    def _forget(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(job_id, None)

    async def _held(self, client: httpx.AsyncClient, job_id: str) -> None:
        """Deliver while renewing this replica's claim on the delivery; stop if the claim is lost."""
        delivery = asyncio.create_task(self._deliver(client, job_id))
        holding = asyncio.create_task(self._hold(job_id))
        try:
            await asyncio.wait({delivery, holding}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (delivery, holding):
                task.cancel()
            await asyncio.gather(delivery, holding, return_exceptions=True)

    async def _hold(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                held = await asyncio.to_thread(self._store.hold_webhook, job_id, self._owner, self._lease_s)
            except Exception:  # a hiccup: the lease still has two thirds left; the next renewal tries again
                log.exception("could not renew a webhook delivery's claim", extra={"job_id": job_id})
                continue
            if not held:
                log.warning("webhook delivery claimed elsewhere; stopping here", extra={"job_id": job_id})
                return

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
        status_code: int | None = None
        try:
            status_code = await self._send(client, job_id, url, payload, number)
            error = None if 200 <= status_code < 300 else f"HTTP {status_code}"
        except asyncio.CancelledError:
            raise
        except (NonPublicAddress, UnresolvableHost) as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 (bad port, bad name, TLS, …: every failure is a failed attempt)
            error = type(exc).__name__  # not str(exc): httpx's messages may quote the URL and its token
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

    async def _send(
        self, client: httpx.AsyncClient, job_id: str, url: str, payload: dict[str, Any], number: int
    ) -> int:
        """One POST; returns the status code. The response body is never read: a receiver cannot flood us."""
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "X-Stub-Job-Id": job_id,
            "X-Stub-Webhook-Attempt": str(number),
            SIGNATURE_HEADER: sign(self._secret, body),
        }
        target = httpx.URL(url)
        address = None if self._settings.WEBHOOK_ALLOW_PRIVATE else await vet_host(target)
        request = pinned_request(client, "POST", target, address, headers=headers, content=body)
        response = await client.send(request, stream=True, follow_redirects=False)
        await response.aclose()
        return response.status_code
