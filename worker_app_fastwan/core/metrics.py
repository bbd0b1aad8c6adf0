"""Prometheus metrics of one worker process (prometheus-client), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "fastwan_jobs_total",
            "Jobs finished, by outcome and error code",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "fastwan_stage_seconds",
            "Time spent per job stage",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "fastwan_job_seconds", "Whole job time in the worker", buckets=_STAGE_BUCKETS, registry=self.registry
        )
        self.queue_wait_seconds = Histogram(
            "fastwan_queue_wait_seconds",
            "Time from submission to start",
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.gpu_memory_used = Gauge("fastwan_gpu_memory_used_bytes", "GPU memory in use", registry=self.registry)
        self.gpu_memory_total = Gauge(
            "fastwan_gpu_memory_total_bytes", "GPU memory on the card", registry=self.registry
        )
        self.gpu_idle_seconds = Histogram(
            "fastwan_gpu_idle_between_jobs_seconds",
            "Time the GPU process waited between handing back one job and receiving the next (idle queues included)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.busy = Gauge("fastwan_busy", "1 while a job runs", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
