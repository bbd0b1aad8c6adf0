"""Buffer-mode figures for cpu_bench.py: per-job worker overhead, and heartbeat punctuality under load.

Overhead per job = (final status at the orchestrator − claim answered) through stub + buffer worker,
minus the same job's time in the job runner alone, in-process (same tiny model, same GPU-child path).
On a shared 2-core machine generation time varies by ±10 % between runs, more than the overhead itself,
so `overhead_in_run_ms_*` also subtracts the runner's own time measured inside that very run
(`timings.total_s`): what remains is claim handling, the `running` report, the outbox and the final report.
The claim → status window leaves out the time a job waits in the queue, which is not the worker's cost.
Both timestamps are taken by a recording proxy in front of the stub, as the orchestrator would see them.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from helpers_procs import RecordingProxy, WorkerProcess, start_stub, wait_final


def _jobs(n: int, small: dict) -> list[dict]:
    return [{"prompt": f"overhead job {i}", "seed": 1000 + i, **small} for i in range(n)]


def runner_alone(tmp: Path, jobs: list[dict]) -> list[float]:
    """Each job's seconds in `JobRunner.run`, in this process: the floor the worker is measured against."""
    from worker_app_fastwan.runner import JobRunner
    from worker_app_fastwan.settings import load_settings
    from worker_app_fastwan.storage import LocalStorage

    async def run() -> list[float]:
        settings = load_settings(None, PIPELINE_BACKEND="tiny", STATE_DIR=tmp / "alone-state",
                                 LOCAL_OUTPUT_DIR=tmp / "alone-videos")
        runner = JobRunner(settings, LocalStorage(settings.LOCAL_OUTPUT_DIR))
        await runner.start()
        times = []
        try:
            for i, job in enumerate(jobs):
                start = time.perf_counter()
                await runner.run(f"alone-{i}", job)
                times.append(time.perf_counter() - start)
        finally:
            await runner.close()
        return times

    return asyncio.run(run())


def _claim_to_status(proxy: RecordingProxy, job_id: str) -> float:
    status = [s for s in proxy.requests(f"/jobs/{job_id}/status") if s.body["status"] in ("completed", "failed")]
    claims = [s for s in proxy.requests("/jobs/claim") if s.status == 200 and s.at <= status[0].at]
    return status[0].at - claims[-1].at


def _max_gap(proxy: RecordingProxy) -> tuple[float, int]:
    beats = [s.at for s in proxy.requests("/heartbeat")]
    return max(b - a for a, b in zip(beats, beats[1:])), len(beats)


def overhead_and_heartbeats(tmp: Path, n: int, heavy: dict, small: dict) -> dict:
    jobs = _jobs(n, small)
    alone = runner_alone(tmp, jobs)
    stub = start_stub(tmp / "stub")
    with RecordingProxy(stub.url) as proxy:
        worker = WorkerProcess.buffer(tmp / "worker", proxy.url, HEARTBEAT_INTERVAL_S=5, CLAIM_POLL_S=0.2).start()
        try:
            worker.wait_for_event("claiming jobs")
            through, in_run = [], []
            for job in jobs:  # one at a time: a job's window never includes another's
                job_id = stub.submit(**job)
                view = wait_final(stub, job_id)
                assert view["status"] == "completed", view
                through.append(_claim_to_status(proxy, job_id))
                in_run.append(through[-1] - view["result"]["timings"]["total_s"])
            heavy_id = stub.submit(prompt="heartbeat under load", seed=1, **heavy)
            heavy_view = wait_final(stub, heavy_id, timeout_s=600)
            gap, beats = _max_gap(proxy)
        finally:
            worker.stop()
            stub.kill()
    overhead_ms = [(t - a) * 1000 for t, a in zip(through, alone)]
    return {
        "overhead_jobs": n, "runner_alone_ms_median": round(statistics.median(alone) * 1000, 1),
        "through_stub_ms_median": round(statistics.median(through) * 1000, 1),
        "overhead_ms_median": round(statistics.median(overhead_ms), 1),
        "overhead_ms_min_max": [round(min(overhead_ms), 1), round(max(overhead_ms), 1)],
        # The same window minus the runner's own time in that very run: no generation-time noise.
        "overhead_in_run_ms_median": round(statistics.median(in_run) * 1000, 1),
        "overhead_in_run_ms_max": round(max(in_run) * 1000, 1),
        "heartbeat_interval_s": 5, "heartbeats_recorded": beats, "heartbeat_max_gap_s": round(gap, 3),
        "heavy_job_inference_s": heavy_view["result"]["timings"]["inference_s"],
    }
