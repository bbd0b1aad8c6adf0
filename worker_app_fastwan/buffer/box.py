"""`python -m worker_app_fastwan buffer`: one slot per device (GPU_DEVICES), run side by side as one box.

Each slot (`slot.Slot`) has its own GPU process, which sees only its device (CUDA_VISIBLE_DEVICES), its
own claim loop and its own heartbeat; with several slots, slot n reports as `<worker id>-<n>`. The box holds
what the process needs once: the orchestrator client, the outbox (delivered once at start, while the models
load, before any slot claims) and the storage. SIGTERM/SIGINT drain every slot (a second one stops them at
once). A slot that goes out leaves the others on; the box exits 1 only once every slot is out, else 0.
Every slot's metrics are served on HOST:METRICS_PORT when that is set.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal

from worker_app_fastwan.buffer.identity import resolve_worker_id
from worker_app_fastwan.buffer.metrics import MetricsServer, serve_metrics
from worker_app_fastwan.buffer.outbox import Outbox, flush
from worker_app_fastwan.buffer.slot import Slot
from worker_app_fastwan.core.devices import SlotDevice, plan_slots, slot_worker_id
from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.core.logs import slot_context
from worker_app_fastwan.core.settings import Settings, SettingsError
from worker_app_fastwan.job.runner import build_runner
from worker_app_fastwan.job.storage import Storage, StorageError, make_storage
from worker_app_fastwan.orchestrator.client import OrchestratorClient

log = logging.getLogger(__name__)


class Box:
    """The slots of one worker process."""

    def __init__(self, settings: Settings, client: OrchestratorClient, outbox: Outbox, slots: list[Slot]):
        self.settings, self.client, self.outbox, self.slots = settings, client, outbox, slots
        self._done: set[int] = set()  # slots whose run ended

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        metrics = self._serve_metrics()
        try:
            codes = await self._run_slots()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if metrics is not None:
                await asyncio.to_thread(metrics.close)
            await self.client.aclose()
        return ExitCode.FAILED if all(s.out_reason for s in self.slots) else max(codes, default=ExitCode.OK)

    def stop(self) -> None:
        """SIGTERM/SIGINT: every slot drains; at a second one, every slot stops at once."""
        for slot in self.slots:
            if slot.index not in self._done:
                slot.stop()

    async def _run_slots(self) -> list[int]:
        # Stored statuses go out once, while the models load; each slot waits for them before it claims.
        flushing = asyncio.ensure_future(flush(self.outbox, self.client))
        alone = len(self.slots) == 1
        tasks = []
        for slot in self.slots:
            with slot_context(None if alone else slot.index):  # every log line of a slot's tasks names it
                tasks.append(asyncio.create_task(self._run_slot(slot, alone, flushing), name=f"slot-{slot.index}"))
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            flushing.cancel()

    async def _run_slot(self, slot: Slot, alone: bool, flushing: asyncio.Future[int]) -> int:
        watching = asyncio.create_task(self._when_out(slot))
        try:
            code = await slot.run_slot(alone=alone, flushing=flushing)
        finally:
            watching.cancel()
            self._done.add(slot.index)
            self._stop_if_only_out_left()
        return ExitCode.OK if slot.out_reason and not alone else code

    async def _when_out(self, slot: Slot) -> None:
        await slot.wait_out()
        if len(self.slots) > 1 and not self._stop_if_only_out_left():
            log.warning("the other slots go on", extra={"slots_left": [s.index for s in self._working()]})

    def _working(self) -> list[Slot]:
        return [s for s in self.slots if not s.out_reason and s.index not in self._done]

    def _stop_if_only_out_left(self) -> bool:
        """Out slots only wait to be stopped: once no slot works any more (all out, or the others finished a
        burst run), drain them. True if none is left working.

        Each slot's end and each slot going out asks again: a slot already stopping is left alone, since a
        second `stop()` is the second signal's stop-now, which would cut short the outbox's delivery."""
        if self._working() or not any(s.out_reason and s.index not in self._done for s in self.slots):
            return False
        draining = [s for s in self.slots if s.index not in self._done and not s.is_stopping]
        if draining and all(s.out_reason for s in self.slots):
            log.error("every slot is out; exiting", extra={"reasons": [s.out_reason for s in self.slots]})
        for slot in draining:
            slot.stop()
        return True

    def _serve_metrics(self) -> MetricsServer | None:
        if not self.settings.METRICS_PORT:
            return None
        return serve_metrics(self.settings.HOST, self.settings.METRICS_PORT, self.slots)


def build_slots(
    settings: Settings,
    storage: Storage,
    client: OrchestratorClient,
    outbox: Outbox,
    worker_id: str,
    plan: list[SlotDevice],
) -> list[Slot]:
    """One slot per device: its own GPU process (seeing only that device), runner and worker id. Their GPU
    processes load SLOT_LOAD_CONCURRENCY at a time: each reads ≈ 25.5 GiB of weights through host memory
    (the tiny backend reads none: its slots, in tests and the demo, start together)."""
    slots = []
    staggered = len(plan) > 1 and settings.PIPELINE_BACKEND != "tiny"
    gate = asyncio.Semaphore(settings.SLOT_LOAD_CONCURRENCY) if staggered else None
    for device in plan:
        make_runner = functools.partial(build_runner, settings, storage, device=device, load_gate=gate)
        slot_id = slot_worker_id(worker_id, device.index, len(plan))
        slots.append(Slot(settings, make_runner, client, outbox, slot_id, device=device))
    return slots


async def run_buffer(settings: Settings) -> int:
    """`python -m worker_app_fastwan buffer`: build the slots from the settings, run them, return the exit code."""
    try:
        settings.require_orchestrator()
        storage = await asyncio.to_thread(make_storage, settings)  # B2 authorises over the network
        outbox = await asyncio.to_thread(Outbox, settings.STATE_DIR / "outbox")
        worker_id = await asyncio.to_thread(resolve_worker_id, settings)
        plan = await asyncio.to_thread(plan_slots, settings.GPU_DEVICES, dict(os.environ))
    except (SettingsError, StorageError) as exc:
        log.error("cannot start the buffer worker", extra={"error": str(exc)})
        return ExitCode.BAD_INPUT
    client = OrchestratorClient.from_settings(settings)
    assert client is not None, "require_orchestrator() checked ORCHESTRATOR_BASE_URL"
    if len(plan) > 1:
        log.info("one slot per device", extra={"devices": [d.label for d in plan], "gpu_devices": settings.GPU_DEVICES})
    slots = build_slots(settings, storage, client, outbox, worker_id, plan)
    return await Box(settings, client, outbox, slots).run()
