"""Webhooks: a job with a `notify_url` gets a POST for each event it asked for (`notify_events`), signed the
Standard Webhooks way (https://www.standardwebhooks.com), so a receiver verifies it with that specification's
own library, which also refuses a replay outside its tolerance window.

Event types: `job.started` (claimed by a worker or the dispatcher; again on each attempt), `job.progress` (at most
one per job per WEBHOOK_PROGRESS_S), `job.completed`, `job.failed`, `job.cancelled`; by default the final three.
Each is a row of `webhook_deliveries`, queued in the transaction of the event it tells of; the store picks what is
due (a job's webhooks go out in order) and leases it while it is in flight (`db/deliveries.py`); every attempt is
kept in `webhook_attempts`. Delivery is at-least-once, with the same `webhook-id` on every attempt of one event
(receivers de-duplicate on it) and the same body bytes. Delivery runs in tasks of its own, never inside a
request: a slow receiver never delays a worker's call. With replicas on one PostgreSQL database every replica
runs a sender: the store hands each due delivery to one of them (`FOR UPDATE SKIP LOCKED`, then its lease), and
a delivery whose replica died mid-attempt is taken by another once its lease runs out.

Headers: `webhook-id`, `webhook-timestamp` (this attempt's, Unix seconds), `webhook-signature` (`v1,` + base64 of
HMAC-SHA256 over `id.timestamp.body`, keyed per `settings.webhook_key`), and, deprecated, `X-Stub-Signature`
(`sha256=` + hex HMAC-SHA256 of the body alone, keyed with WEBHOOK_SECRET's UTF-8 bytes), `X-Stub-Job-Id`,
`X-Stub-Webhook-Attempt`. The body is the job as `GET /v1/jobs/{id}` shows it (for `job.started` and
`job.progress`, its fields as of that event) with the event's `type` and `timestamp` beside them.

A `notify_url` comes from whoever can reach the public API, so the stub treats it as the worker treats an
image URL (`worker_app_fastwan.edge.outbound`, one rule): only public addresses, pinned, no redirects, unless
`WEBHOOK_ALLOW_PRIVATE`. Each attempt's error stays in the stub's log and database; the public job view
shows only whether an attempt succeeded, or the stub would be a port and DNS scanner for anyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from orchestrator_stub.db import NOTIFY_EVENTS, DueWebhook, EventRow, Store
from orchestrator_stub.db.events import FINAL_WEBHOOKS
from orchestrator_stub.settings import StubSettings
from orchestrator_stub.views import event_view, iso, job_view
from orchestrator_stub.wakeup import WakeSignal
from worker_app_fastwan.edge.addresses import forbidden_address
from worker_app_fastwan.edge.outbound import NonPublicAddress, UnresolvableHost, pinned_request, vet_host

log = logging.getLogger("orchestrator_stub.webhooks")

SIGNATURE_HEADER = "X-Stub-Signature"  # deprecated: sent beside the standard headers in v1.3, gone in v1.4
MAX_URL_CHARS = 2048
MAX_IN_FLIGHT = 32  # deliveries being attempted at once (one per job at most)


def sign(secret: str, body: bytes) -> str:
    """The `X-Stub-Signature` value: `sha256=` and the hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def standard_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Standard Webhooks' three headers, signed with the specification's own library."""
    at = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": Webhook(key).sign(webhook_id, at, body),
    }


def check_notify_events(value: object) -> tuple[str, ...]:
    """A submission's `notify_events`: a non-empty list of known event types (duplicates dropped), else
    ValueError saying what is accepted."""
    known = ", ".join(NOTIFY_EVENTS)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a non-empty list of event types: {known}")
    unknown = [v for v in value if v not in NOTIFY_EVENTS]
    if unknown:
        raise ValueError(f"{unknown[0][:64]!r} is not an event type (known: {known})")
    return tuple(dict.fromkeys(value))


def webhook_body(store: Store, due: DueWebhook) -> str:
    """The JSON a delivery sends: the job's fields (the whole job view when it is final; its state as of the
    event for `job.started` and `job.progress`) with the event's `type` and `timestamp`."""
    if due.type in FINAL_WEBHOOKS and (job := store.get_job(due.job_id)) is not None:
        fields = job_view(store, job)
    else:
        fields = event_view(EventRow(due.event_id, due.job_id, due.type, due.event_at, due.event_data))
        for key in ("id", "type", "input", "created_at"):
            fields.pop(key, None)
    body = {"type": due.type, "timestamp": iso(due.event_at), **fields}
    return json.dumps(body, separators=(",", ":"))


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """The wait after failed attempt `attempt`: base, 2 x base, 4 x base, ... at most `max_s` (tenacity's
    wait_exponential, the policy the stub's other retries use)."""
    return float(min(max_s, base_s * 2 ** min(attempt - 1, 62)))


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


class WebhookSender:
    """Takes due deliveries from the store and attempts each in a task of its own (at most MAX_IN_FLIGHT)."""

    def __init__(self, store: Store, settings: StubSettings, wakeup: WakeSignal) -> None:
        assert settings.WEBHOOK_SECRET is not None, "no webhooks without a secret to sign them"
        self._store = store
        self._settings = settings
        self._wakeup = wakeup
        self._secret = settings.WEBHOOK_SECRET.get_secret_value()
        self._key = settings.webhook_key() or b""
        # An attempt longer than this (every phase of httpx's timeout, and resolving the name) is given up for
        # dead, and the delivery becomes due again.
        self._lease_s = 4 * settings.WEBHOOK_TIMEOUT_S + 10
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Start a task for every due delivery; woken when one is queued or ends, and polls as a fallback."""
        async with httpx.AsyncClient(timeout=self._settings.WEBHOOK_TIMEOUT_S) as client:
            try:
                while True:
                    await self._start_due(client)
                    await self._wakeup.wait(self._settings.WEBHOOK_SCAN_S)
            finally:
                for task in self._inflight:
                    task.cancel()
                await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _start_due(self, client: httpx.AsyncClient) -> None:
        room = MAX_IN_FLIGHT - len(self._inflight)
        if room <= 0:
            return
        try:
            due = await asyncio.to_thread(
                self._store.due_webhooks, room, self._lease_s, self._settings.WEBHOOK_MAX_ATTEMPTS
            )
        except Exception:
            log.exception("could not list due webhooks")
            return
        for delivery in due:
            task = asyncio.create_task(self._deliver(client, delivery))
            self._inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wakeup.set()  # room for another, and the job's next webhook may be due

    async def _deliver(self, client: httpx.AsyncClient, due: DueWebhook) -> None:
        try:
            body = due.body if due.body is not None else await asyncio.to_thread(self._freeze_body, due)
            status_code, error = await self._post(client, due, body.encode("utf-8"))
            settings = self._settings
            retry_in = None
            if error is not None and due.attempt < settings.WEBHOOK_MAX_ATTEMPTS:
                # A delay, not a time: the store adds it to its clock (the database's, with replicas).
                retry_in = backoff_s(due.attempt, settings.WEBHOOK_BASE_DELAY_S, settings.WEBHOOK_MAX_DELAY_S)
                asyncio.get_running_loop().call_later(retry_in, self._wakeup.set)  # not a scan later: on time
            state = await asyncio.to_thread(
                self._store.webhook_attempt_done, due.delivery_id, due.attempt, status_code, error, retry_in=retry_in
            )
            if state == "gave_up":
                log.warning("webhook gave up", extra={"job_id": due.job_id, "type": due.type, "attempts": due.attempt})
        except asyncio.CancelledError:
            raise
        except Exception:  # its lease runs out, and it is due again
            log.exception("webhook delivery crashed", extra={"job_id": due.job_id})

    def _freeze_body(self, due: DueWebhook) -> str:
        """The first attempt's body, kept for every retry (store reads: called off the event loop)."""
        return self._store.freeze_webhook_body(due.delivery_id, webhook_body(self._store, due))

    async def _post(self, client: httpx.AsyncClient, due: DueWebhook, body: bytes) -> tuple[int | None, str | None]:
        """One attempt; returns (status code, why it failed or None)."""
        status_code: int | None = None
        try:
            status_code = await self._send(client, due, body)
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
                "job_id": due.job_id,
                "type": due.type,
                "webhook_id": due.webhook_id,
                "attempt": due.attempt,
                "host": urlsplit(due.url).hostname,
                "status_code": status_code,
                "error": error,
            },
        )
        return status_code, error

    async def _send(self, client: httpx.AsyncClient, due: DueWebhook, body: bytes) -> int:
        """One POST; returns the status code. The response body is never read: a receiver cannot flood us."""
        headers = {
            "Content-Type": "application/json",
            **standard_headers(self._key, due.webhook_id, int(time.time()), body),
            "X-Stub-Job-Id": due.job_id,
            "X-Stub-Webhook-Attempt": str(due.attempt),
            SIGNATURE_HEADER: sign(self._secret, body),
        }
        target = httpx.URL(due.url)
        address = None if self._settings.WEBHOOK_ALLOW_PRIVATE else await vet_host(target)
        request = pinned_request(client, "POST", target, address, headers=headers, content=body)
        response = await client.send(request, stream=True, follow_redirects=False)
        await response.aclose()
        return response.status_code
