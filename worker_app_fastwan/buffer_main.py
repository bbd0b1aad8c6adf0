"""`python -m worker_app_fastwan buffer`: build a buffer worker from the settings and run it."""

from __future__ import annotations

import asyncio
import logging

from worker_app_fastwan.buffer_mode import BufferWorker
from worker_app_fastwan.exit_codes import ExitCode
from worker_app_fastwan.gpu_child.handle import GpuChild
from worker_app_fastwan.identity import resolve_worker_id
from worker_app_fastwan.orchestrator_client import OrchestratorClient
from worker_app_fastwan.outbox import Outbox
from worker_app_fastwan.runner import JobRunner
from worker_app_fastwan.settings import Settings, SettingsError
from worker_app_fastwan.storage import StorageError, make_storage

log = logging.getLogger(__name__)


async def run_buffer(settings: Settings) -> int:
    """`python -m worker_app_fastwan buffer`: build the worker from the settings, run it, return the exit code."""
    try:
        settings.require_orchestrator()
        storage = await asyncio.to_thread(make_storage, settings)  # B2 authorises over the network
        outbox = await asyncio.to_thread(Outbox, settings.STATE_DIR / "outbox")
        worker_id = await asyncio.to_thread(resolve_worker_id, settings)
    except (SettingsError, StorageError) as exc:
        log.error("cannot start the buffer worker", extra={"error": str(exc)})
        return ExitCode.BAD_INPUT
    client = OrchestratorClient.from_settings(settings)
    assert client is not None, "require_orchestrator() checked ORCHESTRATOR_BASE_URL"
    runner = JobRunner(settings, storage, child=GpuChild(settings))
    return await BufferWorker(settings, runner, client, outbox, worker_id).run()
