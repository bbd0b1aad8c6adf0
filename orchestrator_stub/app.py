"""`create_app(settings)`: the stub's FastAPI app, its store and its background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import FastAPI

from orchestrator_stub import internal_api, page, public_api, uploads, videos
from orchestrator_stub.auth import InternalKeyMiddleware
from orchestrator_stub.db import Store
from orchestrator_stub.dispatcher import Dispatcher
from orchestrator_stub.leases import run_lease_sweeper
from orchestrator_stub.outputs import OutputStore
from orchestrator_stub.password import PasswordMiddleware
from orchestrator_stub.settings import StubSettings, StubSettingsError
from orchestrator_stub.wakeup import Wakeup
from orchestrator_stub.webhooks import WebhookSender
from worker_app_fastwan.edge.body_guard import BodyGuard

log = logging.getLogger("orchestrator_stub.app")


def create_app(settings: StubSettings) -> FastAPI:
    """Open the database and build the app; the loops start and stop with the app's lifespan. Storage
    credentials that do not work are a `StubSettingsError`."""
    outputs = _output_store(settings)
    webhook_wakeup, dispatch_wakeup = Wakeup(), Wakeup()
    store = Store(
        settings.STUB_DB,
        lease_seconds=settings.LEASE_SECONDS,
        max_attempts=settings.MAX_ATTEMPTS,
        on_final=webhook_wakeup.set,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Before the sweeper's first pass: no worker could renew a lease while the stub was down.
        restarted = store.restart_held_leases()
        log.info("held leases restarted", extra={"jobs": restarted, "lease_seconds": settings.LEASE_SECONDS})
        loop = asyncio.get_running_loop()
        webhook_wakeup.bind(loop)
        dispatch_wakeup.bind(loop)
        loops: list[Coroutine[Any, Any, None]] = [
            run_lease_sweeper(store.expire_leases, settings.LEASE_CHECK_S),
            WebhookSender(store, settings, webhook_wakeup).run(),
        ]
        if settings.DISPATCH_TO:
            loops.append(Dispatcher(store, settings, dispatch_wakeup, outputs).run())
        tasks = [asyncio.create_task(coro) for coro in loops]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            store.close()

    app = FastAPI(title="orchestrator_stub", version="1", lifespan=lifespan)
    # The last added runs first: the key is checked before the body is even read.
    app.add_middleware(BodyGuard, exempt=(uploads.UPLOAD_PATH,))  # uploads.py caps its own body
    app.add_middleware(InternalKeyMiddleware, key=settings.api_key())
    if password := settings.password():
        app.add_middleware(PasswordMiddleware, password=password)
    app.include_router(internal_api.build_router(store, outputs))
    app.include_router(public_api.build_router(store, on_new_job=dispatch_wakeup.set, settings=settings))
    app.include_router(videos.build_router(store, settings.LOCAL_OUTPUT_DIR, outputs))
    app.include_router(uploads.build_router(settings.UPLOAD_DIR, settings.UPLOAD_MAX_BYTES, settings.public_url()))
    page.mount(app, store)
    return app


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
