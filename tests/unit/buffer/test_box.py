"""The box of slots in-process: real Slots, JobRunners, outbox and client; fake GPU children and a
scripted orchestrator (support/fakes.py). The same box runs as real processes in test_slots.py."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import pytest
from support.fakes import FakeOrchestrator, FakeProcess, FakeSpawn, buffer_settings, job

from worker_app_fastwan.buffer.box import Box
from worker_app_fastwan.buffer.outbox import Outbox
from worker_app_fastwan.buffer.slot import Slot
from worker_app_fastwan.core.devices import SlotDevice, slot_worker_id
from worker_app_fastwan.core.protocol import StatusUpdate
from worker_app_fastwan.job.runner import build_runner
from worker_app_fastwan.job.storage import LocalStorage

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def broken() -> FakeSpawn:
    """A GPU process that never loads (a dead card)."""
    return FakeSpawn(load_failure="CUDA error: no CUDA-capable device is detected")


def box_of(tmp_path: Path, orch: FakeOrchestrator, spawns: list[FakeSpawn], **settings: object) -> Box:
    """What buffer/box.build_slots makes, with fake GPU children."""
    config = buffer_settings(tmp_path, **settings)
    outbox, client, storage = Outbox(config.STATE_DIR / "outbox"), orch.client(), LocalStorage(config.LOCAL_OUTPUT_DIR)
    slots = [
        Slot(
            config,
            functools.partial(build_runner, config, storage, spawn=spawn),
            client,
            outbox,
            slot_worker_id("box", n, len(spawns)),
            device=SlotDevice(n, "cpu"),
        )
        for n, spawn in enumerate(spawns)
    ]
    return Box(config, client, outbox, slots)


async def test_slots_report_as_their_own_workers_and_share_the_queue(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job(f"j-{n}") for n in range(6)])
    box = box_of(tmp_path, orch, [FakeSpawn(steps=5, step_s=0.01), FakeSpawn(steps=5, step_s=0.01)])

    assert await box.run() == 0

    finals = {j: orch.statuses(j)[-1] for j in (f"j-{n}" for n in range(6))}
    assert all(f["status"] == "completed" for f in finals.values())
    assert {f["worker_id"] for f in finals.values()} == {"box-0", "box-1"}
    beaters = {b.path.split("/")[-2] for b in orch.beats()}
    assert beaters == {"box-0", "box-1"}, "one heartbeat per slot"


async def test_one_slot_out_the_other_goes_on_and_the_box_exits_0(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("j-1"), job("j-2")])
    box = box_of(tmp_path, orch, [broken(), FakeSpawn()])

    assert await asyncio.wait_for(box.run(), 10) == 0

    assert [orch.statuses(j)[-1]["worker_id"] for j in ("j-1", "j-2")] == ["box-1", "box-1"]
    out = [b.body for b in orch.beats() if b.path.endswith("/box-0/heartbeat") and b.body["slot"]["state"] == "out"]
    assert out and out[-1]["state"] == "draining" and "no CUDA-capable device" in out[-1]["slot"]["reason"]
    assert box.slots[0].slot_state == "out" and box.slots[0].out_reason


async def test_every_slot_out_exits_1_after_delivering_stored_statuses(tmp_path: Path, caplog) -> None:
    orch = FakeOrchestrator(jobs=[job("never")])
    box = box_of(tmp_path, orch, [broken(), broken()], OUTBOX_FLUSH_TIMEOUT_S=10)
    stored = StatusUpdate(worker_id="box-0", status="completed", attempt=1)
    box.outbox.put("from-before", stored)

    with caplog.at_level(logging.INFO):
        assert await asyncio.wait_for(box.run(), 10) == 1

    assert orch.statuses("from-before") == [stored.model_dump(mode="json")], "the outbox went out once"
    assert orch.statuses("never") == [], "nothing claimed"
    # Both slots going out, and each one's end, ask the box to stop: it drains once, never stopping at once
    # as at a second signal (which cut the outbox's delivery short, now and then, on a loaded machine).
    events = [r.getMessage() for r in caplog.records]
    assert events.count("every slot is out; exiting") == 1 and "second signal: stopping now" not in events


async def test_a_lone_slot_whose_gpu_fails_ends_the_worker_with_1(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("never")])
    box = box_of(tmp_path, orch, [broken()])

    assert await asyncio.wait_for(box.run(), 10) == 1
    beat = orch.beats()[-1]
    assert beat.path.endswith("/box/heartbeat"), "one slot keeps the worker id"


async def test_stop_drains_every_slot(tmp_path: Path) -> None:
    orch = FakeOrchestrator(jobs=[job("a"), job("b"), job("c")])
    spawns = [FakeSpawn(steps=30, step_s=0.01), FakeSpawn(steps=30, step_s=0.01)]
    box = box_of(tmp_path, orch, spawns, BUFFER_EXIT_WHEN_IDLE=False)
    running = asyncio.create_task(box.run())
    while not all(s.processes and s.last.jobs for s in spawns):
        await asyncio.sleep(0.005)

    box.stop()  # what SIGTERM does
    assert await asyncio.wait_for(running, 10) == 0

    started = spawns[0].last.jobs + spawns[1].last.jobs
    assert sorted(started) == ["a", "b"] and all(orch.statuses(j)[-1]["status"] == "completed" for j in started)
    assert orch.statuses("c") == [], "no claim after the stop"


class LoadCount:
    """How many fake GPU processes are loading their model at once, and the most there ever were."""

    def __init__(self) -> None:
        self.now = self.most = 0


def slow_loading(count: LoadCount, load_s: float):
    """`ChildProcess(settings, env=…)` as job/runner.build_runner calls it: a fake whose model takes `load_s` to
    load."""

    class SlowLoad(FakeProcess):
        def start(self) -> None:
            count.now += 1
            count.most = max(count.most, count.now)
            asyncio.get_running_loop().call_later(load_s, self._loaded)

        def _loaded(self) -> None:
            count.now -= 1
            super().start()

    return lambda settings, env=None: SlowLoad(settings)


@pytest.mark.parametrize(("backend", "at_once", "most"), [("diffusers", 1, 1), ("diffusers", 2, 2), ("tiny", 1, 4)])
async def test_slots_load_their_models_at_most_slot_load_concurrency_at_once(
    tmp_path: Path, monkeypatch, backend: str, at_once: int, most: int
) -> None:
    """issue 24, item 3: each load reads every weight through host memory (≈ 25.5 GiB); eight at once would
    need eight times that. The real build_slots, over fake GPU processes that take 0.1 s to load."""
    from worker_app_fastwan.buffer import box as box_module
    from worker_app_fastwan.job import runner as runner_module

    count = LoadCount()
    monkeypatch.setattr(runner_module, "ChildProcess", slow_loading(count, 0.1))
    orch = FakeOrchestrator(jobs=[job(f"j-{n}") for n in range(4)])
    # the tiny backend reads no weights: its slots (tests, the demo) start together
    config = buffer_settings(tmp_path, SLOT_LOAD_CONCURRENCY=at_once, PIPELINE_BACKEND=backend)
    outbox, client = Outbox(config.STATE_DIR / "outbox"), orch.client()
    plan = [SlotDevice(n, "cpu") for n in range(4)]
    slots = box_module.build_slots(config, LocalStorage(config.LOCAL_OUTPUT_DIR), client, outbox, "box", plan)

    assert await asyncio.wait_for(Box(config, client, outbox, slots).run(), 10) == 0

    assert count.most == most, "never more loads at once than allowed, and that many when there is room"
    assert all(orch.statuses(f"j-{n}")[-1]["status"] == "completed" for n in range(4))
