"""`create_app(settings)`: the stub's FastAPI app, its store and its background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from orchestrator_stub import internal_api, metrics, page, public_api, streams, uploads, videos
from orchestrator_stub.auth import InternalKeyMiddleware
from orchestrator_stub.browser_guard import BrowserGuard
from orchestrator_stub.claim_wait import ClaimWaiters
from orchestrator_stub.db import BadDatabaseUrl, Database, Queued, Store, UnencodableText, mask_password
from orchestrator_stub.db.notify import Listener
from orchestrator_stub.dispatcher import Dispatcher
from orchestrator_stub.event_hub import EventHub, run_event_pruner
from orchestrator_stub.leases import run_lease_sweeper
from orchestrator_stub.outputs import OutputStore
from orchestrator_stub.password import PasswordMiddleware
from orchestrator_stub.results import rules_from_settings
from orchestrator_stub.settings import SECRET_PREFIX, StubSettings, StubSettingsError
from orchestrator_stub.throttle import GuessThrottle
from orchestrator_stub.wakeup import Wakeup
from orchestrator_stub.webhooks import WebhookSender
from worker_app_fastwan.edge.body_guard import BodyGuard

log = logging.getLogger("orchestrator_stub.app")


def create_app(settings: StubSettings) -> FastAPI:
    """Open the database and build the app; the loops start and stop with the app's lifespan. Storage
    credentials that do not work are a `StubSettingsError`."""
    outputs = _output_store(settings)
    event_wakeup, webhook_wakeup, dispatch_wakeup, waiters = Wakeup(), Wakeup(), Wakeup(), ClaimWaiters()
    try:
        store = Store(
            Database(settings.STUB_DB, pool_size=settings.DB_POOL_SIZE),
            lease_seconds=settings.LEASE_SECONDS,
            max_attempts=settings.MAX_ATTEMPTS,
            max_queued_jobs=settings.MAX_QUEUED_JOBS,
            max_workers=settings.MAX_WORKERS,
            worker_retention_s=settings.WORKER_RETENTION_S,
            retry_elsewhere_s=settings.RETRY_ELSEWHERE_S,
            quarantine_after=settings.QUARANTINE_AFTER_FAILURES,
            quarantine_s=settings.QUARANTINE_S,
            webhook_progress_s=settings.WEBHOOK_PROGRESS_S,
        )
    except (DBAPIError, BadDatabaseUrl) as exc:  # the server's message names host and user, never the password
        raise StubSettingsError(f"STUB_DB: cannot open {mask_password(settings.STUB_DB)}: {_reason(exc)}") from None
    log.info("database ready", extra={"db": store.db.shown, "backend": store.backend, "revision": store.revision})
    hub = EventHub(store, event_wakeup)
    rules = rules_from_settings(settings.public_url(), settings.storage_origins(), settings.STORAGE_PREFIX)

    def queued(job: Queued | None) -> None:
        waiters.offer(job)
        dispatch_wakeup.set()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Before the sweeper's first pass: no worker could renew a lease while the stub was down.
        restarted = store.restart_held_leases()
        log.info("held leases restarted", extra={"jobs": restarted, "lease_seconds": settings.LEASE_SECONDS})
        # Jobs from a stub older than the event log get their first event; then their pending webhooks.
        backfilled = store.backfill_events()
        pending = store.restart_webhooks()
        log.info("event log ready", extra={"backfilled_jobs": backfilled, "pending_webhooks": pending})
        if settings.WEBHOOK_SECRET and not settings.WEBHOOK_SECRET.get_secret_value().startswith(SECRET_PREFIX):
            log.warning(
                "WEBHOOK_SECRET is not in the Standard Webhooks form (whsec_ + base64): its UTF-8 bytes are the key"
                " receivers verify webhook-signature with (orchestrator_stub/README.md, Webhooks)"
            )
        loop = asyncio.get_running_loop()
        for wakeup in (event_wakeup, webhook_wakeup, dispatch_wakeup):
            wakeup.bind(loop)
        waiters.bind(loop)
        store.subscribe(on_queued=queued, on_event=event_wakeup.set, on_webhook=webhook_wakeup.set)
        listener = Listener(store) if store.db.postgres else None
        if listener is not None:
            listener.start()
        loops: list[Coroutine[Any, Any, None]] = [
            run_lease_sweeper(store.expire_leases, settings.LEASE_CHECK_S),
            hub.run(),
            run_event_pruner(store, settings.EVENT_RETENTION_S),
        ]
        if settings.WEBHOOK_SECRET:  # without one no job can ask for webhooks: they could not be signed
            loops.append(WebhookSender(store, settings, webhook_wakeup).run())
        if settings.DISPATCH_TO:
            loops.append(Dispatcher(store, settings, dispatch_wakeup, rules, outputs).run())
        tasks = [asyncio.create_task(coro) for coro in loops]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            store.subscribe()
            if listener is not None:
                await asyncio.to_thread(listener.stop)
            store.close()

    # /docs and /redoc load their scripts from a CDN (no pinning, no integrity check): off unless asked for.
    # /openapi.json (plain JSON) stays: scripts and the fuzz tests read it.
    docs = settings.STUB_API_DOCS
    app = FastAPI(
        title="orchestrator_stub",
        version="1.3",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    # The last added runs first: foreign pages are refused before anything; the key is checked before the body
    # is even read; the body guard sees every body before a route parses it.
    app.add_middleware(BodyGuard, exempt=(uploads.UPLOAD_PATH,), timeout_s=settings.BODY_TIMEOUT_S)

    def throttle() -> GuessThrottle:
        return GuessThrottle(settings.AUTH_FREE_FAILURES, settings.AUTH_MAX_DELAY_S)

    app.add_middleware(InternalKeyMiddleware, key=settings.api_key(), throttle=throttle())
    if password := settings.password():
        app.add_middleware(PasswordMiddleware, password=password, throttle=throttle())
    app.add_middleware(BrowserGuard, allowed_hosts=settings.allowed_hosts(), raw_body_paths=(uploads.UPLOAD_PATH,))
    app.add_exception_handler(UnencodableText, _unencodable)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.include_router(
        internal_api.build_router(
            store,
            rules,
            outputs,
            secret_required=settings.ATTEMPT_SECRET_REQUIRED,
            waiters=waiters,
            max_wait_s=settings.CLAIM_WAIT_MAX_S,
        )
    )
    app.include_router(metrics.build_router(store, waiting=lambda: len(waiters)))
    app.include_router(public_api.build_router(store, settings=settings))
    app.include_router(streams.build_router(store, hub, settings))
    app.include_router(videos.build_router(store, settings.LOCAL_OUTPUT_DIR, rules.storage, outputs))
    limits = uploads.UploadLimits(
        max_bytes=settings.UPLOAD_MAX_BYTES,
        total_max_bytes=settings.UPLOAD_TOTAL_MAX_BYTES,
        client_max_bytes=settings.UPLOAD_CLIENT_MAX_BYTES,
        quota_window_s=settings.UPLOAD_QUOTA_WINDOW_S,
        max_concurrent=settings.UPLOAD_MAX_CONCURRENT,
        timeout_s=settings.UPLOAD_TIMEOUT_S,
    )
    app.include_router(uploads.build_router(settings.UPLOAD_DIR, limits, settings.public_url()))
    own_storage = (outputs.origin(),) if outputs is not None else ()
    page.mount(
        app, store, media_origins=(*settings.storage_origins(), *own_storage), form_defaults=settings.STUB_FORM_DEFAULTS
    )
    return app


async def _unencodable(_: Request, exc: Exception) -> JSONResponse:
    """The store refused a text it cannot write as UTF-8: the sender's fault, never a 500."""
    error = {"code": "invalid_input", "message": f"body: {exc}", "retryable": False}
    return JSONResponse({"error": error}, status_code=422)


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """The database could not be reached (a restarting PostgreSQL, a failover): 503, which workers retry, and
    never the driver's message (it may name the server)."""
    log.error("database unavailable", extra={"error": type(exc).__name__})
    return JSONResponse(
        {"detail": "the database is unavailable; try again"}, status_code=503, headers={"Retry-After": "2"}
    )


def _reason(exc: Exception) -> str:
    """The driver's one-line reason (psycopg's names the host and user, never the password)."""
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split())[:500]


def _output_store(settings: StubSettings) -> OutputStore | None:
    """v1.2 output targets, when the stub has S3 or B2 credentials (else None: workers store themselves)."""
    try:
        outputs = OutputStore.from_settings(
            settings, public_url=settings.public_url(), ttl_s=settings.OUTPUT_TARGET_TTL_S
        )
    except Exception as exc:  # b2sdk and boto3 raise many types; their messages carry no secret
        raise StubSettingsError(f"storage: {settings.storage} set-up failed: {type(exc).__name__}: {exc}") from None
    if outputs is not None:
        log.info("issuing output targets", extra={"bucket": outputs.bucket, "prefix": outputs.prefix})
    return outputs
