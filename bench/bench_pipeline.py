"""Pipelining and slots for cpu_bench.py: the same jobs through one buffer worker three ways, side by side.

Arms: one slot pipelined (the default), one slot one-at-a-time (BUFFER_PIPELINING=false), and two CPU slots
(GPU_DEVICES=cpu,cpu, pipelined). Every arm gets a fresh stub, a recording proxy in front of it that holds
each final-status answer back 0.5 s, and a worker whose every upload sleeps 1 s first (B2 from a rented
box; tests/support/delayed_upload_worker.py). Both wrappers exist only here and in the tests. All jobs are queued
before the worker claims, so the worker never waits for work.

- `gpu_idle_between_jobs_ms_*`: per job after the first of a slot, the time from the GPU process handing
  back the previous job's MP4 to it being handed the next job, as the worker logs it (`gpu_idle_ms` on
  "generation started").
- `*_jobs_per_min`: jobs ÷ (last final status answered − first claim answered), at the proxy.
- `pipelined_throughput_ratio`: pipelined ÷ one-at-a-time jobs per minute; `two_slots_vs_one_ratio`:
  two slots ÷ one pipelined slot.
- `gpu_busy_fraction_*`: the jobs' own generation time (`timings.inference_s`, summed) ÷ the span (per slot):
  the share of time the GPU process worked. On a shared machine the arms run minutes apart under different
  loads, so generation time itself drifts between arms; the ratio of busy fractions
  (`pipelined_throughput_ratio_load_normalised`) is the throughput ratio the same jobs would show at equal
  generation speed.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from support.procs import wait_final
from support.slots import DelayedUploadWorker, StatusProxy
from support.stubs import Stubs

UPLOAD_DELAY_S = 1.0
FINAL_ANSWER_DELAY_S = 0.5


def _arm(tmp: Path, name: str, jobs: list[dict], **env: str) -> dict:
    stub = Stubs(tmp / name).start()
    with StatusProxy(stub.url, final_delay_s=FINAL_ANSWER_DELAY_S) as proxy:
        worker = DelayedUploadWorker.buffer(
            tmp / name / "worker",
            proxy.url,
            BUFFER_WORKER_ID=name,
            UPLOAD_DELAY_S=str(UPLOAD_DELAY_S),
            HEARTBEAT_INTERVAL_S="5",
            PROGRESS_MIN_INTERVAL_S="1",
            **env,
        ).start()
        try:
            slots = 2 if env.get("GPU_DEVICES") == "cpu,cpu" else 1
            for slot in range(slots):
                worker.wait_for_event("claiming jobs", 180, **({"slot": slot} if slots > 1 else {}))
            ids = [stub.submit(**job) for job in jobs]  # queued before any claim can take one
            views = [wait_final(stub, job_id, 600) for job_id in ids]
            assert all(v["status"] == "completed" for v in views), views
            first_claim = min(c.at for c in proxy.claims())
            last_final = max(s.at for s in proxy.finals())
            idle = [e["gpu_idle_ms"] for e in worker.events("generation started") if e.get("gpu_idle_ms") is not None]
            inference = [v["result"]["timings"]["inference_s"] for v in views]
        finally:
            worker.stop()
            stub.kill()
    # The proxy records a request when it arrives; a final status's answer leaves FINAL_ANSWER_DELAY_S later.
    span_s = last_final + FINAL_ANSWER_DELAY_S - first_claim
    return {
        "busy_fraction": sum(inference) / span_s / slots,
        "jobs_per_min": round(len(jobs) / span_s * 60, 2),
        "span_s": round(span_s, 2),
        "idle_ms": idle,
        "inference_s_median": round(statistics.median(inference), 2),
    }


def pipelining_bench(tmp: Path, n: int, job: dict) -> dict:
    jobs = [{"prompt": f"pipelined job {i}", "seed": 2000 + i, **job} for i in range(n)]
    pipelined = _arm(tmp, "pipelined", jobs)
    sequential = _arm(tmp, "sequential", jobs, BUFFER_PIPELINING="false")
    two_slots = _arm(tmp, "two-slots", jobs, GPU_DEVICES="cpu,cpu", OMP_NUM_THREADS="1")
    return {
        "pipeline_jobs": n,
        "pipeline_job": job,
        "pipeline_upload_delay_s": UPLOAD_DELAY_S,
        "pipeline_final_answer_delay_s": FINAL_ANSWER_DELAY_S,
        "pipeline_job_inference_s_median": pipelined["inference_s_median"],
        "gpu_idle_between_jobs_ms_median_pipelined": round(statistics.median(pipelined["idle_ms"]), 1),
        "gpu_idle_between_jobs_ms_max_pipelined": round(max(pipelined["idle_ms"]), 1),
        "gpu_idle_between_jobs_ms_median_one_at_a_time": round(statistics.median(sequential["idle_ms"]), 1),
        "pipelined_jobs_per_min": pipelined["jobs_per_min"],
        "one_at_a_time_jobs_per_min": sequential["jobs_per_min"],
        "pipelined_throughput_ratio": round(pipelined["jobs_per_min"] / sequential["jobs_per_min"], 2),
        "gpu_busy_fraction_pipelined": round(pipelined["busy_fraction"], 3),
        "gpu_busy_fraction_one_at_a_time": round(sequential["busy_fraction"], 3),
        "pipelined_throughput_ratio_load_normalised": round(
            pipelined["busy_fraction"] / sequential["busy_fraction"], 2
        ),
        "two_slots_jobs_per_min": two_slots["jobs_per_min"],
        "two_slots_vs_one_ratio": round(two_slots["jobs_per_min"] / pipelined["jobs_per_min"], 2),
        "two_slots_job_inference_s_median": two_slots["inference_s_median"],
    }
