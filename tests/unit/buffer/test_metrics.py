"""Buffer mode's metrics endpoint: every slot's metrics on one port, labelled by slot, served over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker_app_fastwan.buffer.metrics import MetricsServer, serve_metrics
from worker_app_fastwan.core.metrics import Metrics


@dataclass
class FakeSlot:
    index: int
    worker_id: str
    metrics: Metrics = field(default_factory=Metrics)
    slot_state: str = "idle"
    jobs_held: int = 0


@pytest.fixture
def two_slots() -> Iterator[tuple[list[FakeSlot], MetricsServer]]:
    slots = [FakeSlot(0, "box-0"), FakeSlot(1, "box-1")]
    server = serve_metrics("127.0.0.1", 0, slots)
    yield slots, server
    server.close()


def scrape(server: MetricsServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_slot_s_metrics_carry_its_slot_and_worker_id(two_slots) -> None:
    slots, server = two_slots
    slots[0].metrics.jobs.labels("completed", "").inc(3)
    slots[1].metrics.jobs.labels("failed", "timeout").inc()
    slots[1].metrics.gpu_memory_used.set(2**30)

    seen = scrape(server)

    def value(name: str, **labels: str) -> float | None:
        return seen.get((name, frozenset(labels.items())))

    assert value("fastwan_jobs_total", slot="0", worker_id="box-0", outcome="completed", code="") == 3
    assert value("fastwan_jobs_total", slot="1", worker_id="box-1", outcome="failed", code="timeout") == 1
    assert value("fastwan_jobs_total", slot="1", worker_id="box-1", outcome="completed", code="") is None
    assert value("fastwan_gpu_memory_used_bytes", slot="1", worker_id="box-1") == 2**30
    assert value("fastwan_gpu_memory_used_bytes", slot="0", worker_id="box-0") == 0


def test_slot_state_and_jobs_held_follow_the_slot_at_each_scrape(two_slots) -> None:
    slots, server = two_slots
    slots[1].slot_state, slots[1].jobs_held = "out", 0
    slots[0].slot_state, slots[0].jobs_held = "busy", 2

    seen = scrape(server)
    states = {
        (dict(labels)["slot"], dict(labels)["state"]): v
        for (name, labels), v in seen.items()
        if name == "fastwan_slot_state"
    }
    assert {k for k, v in states.items() if v == 1} == {("0", "busy"), ("1", "out")}
    assert len(states) == 12, "every state is a series, so a dashboard sees a slot leave one"
    assert seen[("fastwan_slot_jobs_held", frozenset({("slot", "0"), ("worker_id", "box-0")}))] == 2

    slots[0].slot_state, slots[0].jobs_held = "idle", 0
    again = scrape(server)
    assert again[("fastwan_slot_state", frozenset({("slot", "0"), ("worker_id", "box-0"), ("state", "idle")}))] == 1
    assert again[("fastwan_slot_jobs_held", frozenset({("slot", "0"), ("worker_id", "box-0")}))] == 0
