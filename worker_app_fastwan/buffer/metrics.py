"""Buffer mode's Prometheus metrics: every slot's own metrics on one port, told apart by a `slot` label.

Each slot keeps the same `Metrics` queue mode serves (its runner's registry); `SlotsCollector` merges them
at scrape time, adding `slot` and `worker_id` labels, plus the slot's state (`fastwan_slot_state`, one
series per state, 1 for the current one) and how many jobs it holds. prometheus-client's own threaded
server serves them on `HOST:METRICS_PORT` (off when METRICS_PORT is 0), so a scrape never runs on the
event loop; it only reads counters and one attribute per slot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker_app_fastwan.core.metrics import Metrics

log = logging.getLogger(__name__)

SLOT_STATES = ("starting", "idle", "busy", "draining", "out", "stopped")


class SlotView(Protocol):
    """What the collector reads of a slot (from the server's thread: plain attribute reads only)."""

    worker_id: str

    @property
    def index(self) -> int: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def slot_state(self) -> str: ...

    @property
    def jobs_held(self) -> int: ...


class SlotsCollector(Collector):
    def __init__(self, slots: Sequence[SlotView]) -> None:
        self._slots = slots

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for slot in self._slots:
            labels = {"slot": str(slot.index), "worker_id": slot.worker_id}
            for family in slot.metrics.registry.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                for sample in family.samples:
                    into.add_sample(sample.name, {**labels, **sample.labels}, sample.value, sample.timestamp)
        yield from merged.values()
        state = GaugeMetricFamily(
            "fastwan_slot_state", "1 for the slot's current state", labels=["slot", "worker_id", "state"]
        )
        held = GaugeMetricFamily(
            "fastwan_slot_jobs_held",
            "Jobs the slot holds: generating, plus finished ones still uploading or reporting",
            labels=["slot", "worker_id"],
        )
        for slot in self._slots:
            current = slot.slot_state
            for name in SLOT_STATES:
                state.add_metric([str(slot.index), slot.worker_id, name], 1.0 if name == current else 0.0)
            held.add_metric([str(slot.index), slot.worker_id], float(slot.jobs_held))
        yield state
        yield held


@dataclass
class MetricsServer:
    """prometheus-client's WSGI server in a daemon thread; `close()` stops it."""

    server: object
    thread: threading.Thread
    port: int

    def close(self) -> None:
        self.server.shutdown()  # type: ignore[attr-defined]
        self.server.server_close()  # type: ignore[attr-defined]
        self.thread.join(timeout=5)


def serve_metrics(host: str, port: int, slots: Sequence[SlotView]) -> MetricsServer:
    """Serve the slots' metrics on host:port (port 0 picks a free one; the chosen one is in `.port`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SlotsCollector(slots))
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[1]
    log.info("metrics served", extra={"host": host, "port": bound})
    return MetricsServer(server, thread, bound)
