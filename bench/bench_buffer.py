"""Buffer-mode figures for cpu_bench.py: per-job worker overhead, and heartbeat punctuality under load.

Each job runs twice, alternating: through stub + buffer worker (final status at the orchestrator − claim
answered, both taken by a recording proxy in front of the stub, as the orchestrator sees them; the time a
job waits in the queue is not the worker's cost), and in-process in the job runner alone (same tiny model,
same seed, same GPU-child path). On a shared 2-core machine generation time varies by ±10 % between two
runs of one job, more than the overhead itself, so each arm's wall time has the runner's own
`timings.total_s` of that very run subtracted before the two are compared: `overhead_ms_*` is then what
the worker adds around the runner (claim handling, the `running` report, the outbox, the final report)
beyond what calling the runner in-process costs. `overhead_wall_ms_*` is the plain difference of wall
times, noise and all.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from pathlib import Path

from support.procs import RecordingProxy, WorkerProcess, wait_final
from support.stubs import Stubs, wait_for


def _jobs(n: int, small: dict) -> list[dict]:
    return [{"prompt": f"overhead job {i}", "seed": 1000 + i, **small} for i in range(n)]


class RunnerAlone:
    """The job runner in this process (its GPU child loaded once): the floor the worker is measured against."""

    def __init__(self, tmp: Path) -> None:
        from anyio.from_thread import start_blocking_portal

        from worker_app_fastwan.core.settings import load_settings
        from worker_app_fastwan.job.runner import build_runner
        from worker_app_fastwan.job.storage import LocalStorage

        settings = load_settings(
            None, PIPELINE_BACKEND="tiny", STATE_DIR=tmp / "alone-state", LOCAL_OUTPUT_DIR=tmp / "alone-videos"
        )
        # An event loop on a thread of its own, so this synchronous bench can call the async runner.
        self._stack = contextlib.ExitStack()
        self.portal = self._stack.enter_context(start_blocking_portal("asyncio"))
        self.runner = build_runner(settings, LocalStorage(settings.LOCAL_OUTPUT_DIR))
        self.portal.call(self.runner.start)

    def seconds(self, job_id: str, job: dict) -> tuple[float, float]:
        """Wall seconds of the call, and the runner's own `timings.total_s` inside it."""
        start = time.perf_counter()
        result = self.portal.call(self.runner.run, job_id, job)
        return time.perf_counter() - start, result.timings.total_s

    def close(self) -> None:
        try:
            self.portal.call(self.runner.close)
        finally:
            self._stack.close()


def _claim_to_status(proxy: RecordingProxy, job_id: str) -> float:
    # The proxy records a request once its answer is back, a moment after the stub already shows the job final.
    status = wait_for(
        lambda: [s for s in proxy.requests(f"/jobs/{job_id}/status") if s.body["status"] in ("completed", "failed")],
        5,
        what="the final status record",
    )
    claims = [s for s in proxy.requests("/jobs/claim") if s.status == 200 and s.at <= status[0].at]
    return status[0].at - claims[-1].at


def _max_gap(proxy: RecordingProxy) -> tuple[float, int]:
    beats = [s.at for s in proxy.requests("/heartbeat")]
    return max(b - a for a, b in itertools.pairwise(beats)), len(beats)


def overhead_and_heartbeats(tmp: Path, n: int, heavy: dict, small: dict) -> dict:
    jobs = _jobs(n, small)
    alone_runner = RunnerAlone(tmp)
    stub = Stubs(tmp / "stub").start()
    with RecordingProxy(stub.url) as proxy:
        # Production cadences (the test defaults post progress at every step).
        worker = WorkerProcess.buffer(
            tmp / "worker",
            proxy.url,
            HEARTBEAT_INTERVAL_S=5,
            CLAIM_POLL_S=0.2,
            PROGRESS_MIN_INTERVAL_S=1,
            RETRY_MAX_S=60,
        ).start()
        try:
            worker.wait_for_event("claiming jobs")
            alone, through, overhead = [], [], []
            for i, job in enumerate(jobs):  # alternating, one at a time: both see the same machine state
                alone_s, alone_runner_s = alone_runner.seconds(f"alone-{i}", job)
                job_id = stub.submit(**job)
                view = wait_final(stub, job_id)
                assert view["status"] == "completed", view
                through_s = _claim_to_status(proxy, job_id)
                alone.append(alone_s)
                through.append(through_s)
                overhead.append((through_s - view["result"]["timings"]["total_s"]) - (alone_s - alone_runner_s))
            alone_runner.close()
            heavy_id = stub.submit(prompt="heartbeat under load", seed=1, **heavy)
            heavy_view = wait_final(stub, heavy_id, timeout_s=600)
            gap, beats = _max_gap(proxy)
        finally:
            worker.stop()
            stub.kill()
    wall_ms = [(t - a) * 1000 for t, a in zip(through, alone, strict=True)]
    overhead_ms = [o * 1000 for o in overhead]
    return {
        "overhead_jobs": n,
        "runner_alone_ms_median": round(statistics.median(alone) * 1000, 1),
        "through_stub_ms_median": round(statistics.median(through) * 1000, 1),
        "overhead_ms_median": round(statistics.median(overhead_ms), 1),
        "overhead_ms_min_max": [round(min(overhead_ms), 1), round(max(overhead_ms), 1)],
        "overhead_wall_ms_median": round(statistics.median(wall_ms), 1),
        "overhead_wall_ms_min_max": [round(min(wall_ms), 1), round(max(wall_ms), 1)],
        "heartbeat_interval_s": 5,
        "heartbeats_recorded": beats,
        "heartbeat_max_gap_s": round(gap, 3),
        "heavy_job_inference_s": heavy_view["result"]["timings"]["inference_s"],
    }
