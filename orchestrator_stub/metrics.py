"""`GET /metrics`: the queue as Prometheus sees it, for dashboards and autoscalers (docs/deploy.md, "Scaling").

Every figure but one is read from the database at each scrape (`Store.figures`), so every replica reports the
same queue: aggregate them with `max`, not `sum`. The exception is `stub_claims_waiting`, this replica's own
long-poll claims. Counters (`*_total`) are counts of rows kept in the database, so they survive restarts and
agree between replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from orchestrator_stub.db import STATUSES, Store
from worker_app_fastwan.core.protocol import Capabilities

MODES: tuple[str, ...] = tuple(Capabilities().modes)  # every mode a job can have: shown at 0 when none is queued


class QueueCollector(Collector):
    def __init__(self, store: Store, waiting: Callable[[], int]) -> None:
        self._store = store
        self._waiting = waiting

    def collect(self) -> Iterator[Metric]:
        figures = self._store.figures()
        queued = GaugeMetricFamily("stub_jobs_queued", "Jobs waiting for a worker, by mode.", labels=["mode"])
        for mode in sorted(set(MODES) | set(figures.queued_by_mode)):
            queued.add_metric([mode], figures.queued_by_mode.get(mode, 0))
        yield queued
        statuses = {s: figures.statuses.get(s, 0) for s in STATUSES}
        yield GaugeMetricFamily(
            "stub_jobs_running",
            "Jobs held by a worker (claimed or running).",
            statuses["claimed"] + statuses["running"],
        )
        by_status = GaugeMetricFamily("stub_jobs", "Jobs in the database, by status.", labels=["status"])
        for status, n in statuses.items():
            by_status.add_metric([status], n)
        yield by_status
        yield GaugeMetricFamily(
            "stub_oldest_queued_age_seconds",
            "How long the oldest queued job has existed (0 when none is queued).",
            figures.oldest_queued_age_s,
        )
        yield CounterMetricFamily("stub_claims", "Jobs handed to workers (every attempt).", figures.claims)
        yield CounterMetricFamily(
            "stub_lease_expiries", "Attempts that ended because the worker's lease ran out.", figures.lease_expiries
        )
        yield CounterMetricFamily("stub_jobs_completed", "Jobs that completed.", statuses["completed"])
        yield CounterMetricFamily(
            "stub_jobs_failed", "Jobs that failed for good (cancels included).", statuses["failed"]
        )
        yield GaugeMetricFamily(
            "stub_workers_seen", "Workers heard from (a claim or a heartbeat) in the last minute.", figures.workers_seen
        )
        yield GaugeMetricFamily(
            "stub_workers_quarantined", "Workers getting no jobs after failing too often.", len(figures.quarantined)
        )
        yield GaugeMetricFamily("stub_claims_waiting", "Long-poll claims waiting in this replica.", self._waiting())


def build_router(store: Store, waiting: Callable[[], int]) -> APIRouter:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(store, waiting))
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
