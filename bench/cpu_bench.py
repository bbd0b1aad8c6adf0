"""CPU benchmarks, side by side in one run (`make bench`): prints a table, writes bench/results/latest.json.

On a shared CPU machine only ratios mean much; absolute GPU times come from bench/gpu_bench.py.

1. worker overhead: N jobs through the stub and a buffer-mode worker vs the same jobs run in-process by
   the job runner alone (same tiny model, same GPU-child path) -> overhead per job;
2. heartbeat punctuality while a CPU-heavy generation runs (buffer mode), and /health latency while a job
   generates (queue mode);
3. MP4 encoding of 121 frames at 704x1280 (smooth moving content plus noise): the project's encoder vs
   `imageio.mimsave` defaults (what FastVideo does) and diffusers' `export_to_video`; plus how long the
   encoder adds after the last frame when frames arrive at a GPU's decoding pace;
4. start-up to ready, and idle RSS (parent and GPU child);
5. pipelining and slots (bench_pipeline.py): GPU idle time between jobs and jobs per minute, pipelined vs
   one-at-a-time, with every upload delayed 1 s and every final-status answer 0.5 s; two CPU slots vs one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the loopback helpers the tests use

from support.http_servers import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "latest.json"
HEAVY = {"width": 768, "height": 768, "num_frames": 57, "num_inference_steps": 3}
SMALL = {"width": 256, "height": 256, "num_frames": 9}
PIPELINE_JOB = {"width": 384, "height": 384, "num_frames": 33, "num_inference_steps": 3}  # about 2 s on 2 idle cores


# ---------------------------------------------------------------- 3. encoding


def test_frames(n: int = 121, height: int = 704, width: int = 1280) -> np.ndarray:
    """Smooth moving gradients plus mild noise: never zeros, which every encoder flatters."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        rgb = np.stack([np.sin((x + 8 * i) / 60), np.sin((y + 5 * i) / 45), np.sin((x + y + 10 * i) / 80)], -1)
        frames[i] = np.clip(128 + 100 * rgb + rng.normal(0, 8, rgb.shape), 0, 255)
    return frames


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def encode_bench(tmp: Path) -> dict:
    import imageio
    from diffusers.utils import export_to_video

    from worker_app_fastwan.gpu_child.encoder import Mp4Writer, encode_mp4

    frames = test_frames()
    chunks = [frames[:1]] + [frames[i : i + 4] for i in range(1, len(frames), 4)]
    paths = {name: tmp / f"{name}.mp4" for name in ("project", "mimsave", "export")}
    times = {
        "project": _timed(lambda: encode_mp4(chunks, paths["project"], 1280, 704, 24)),
        "mimsave": _timed(lambda: imageio.mimsave(paths["mimsave"], list(frames), fps=24)),
        "export": _timed(lambda: export_to_video(list(frames.astype(np.float32) / 255), str(paths["export"]), fps=24)),
    }
    sizes = {name: path.stat().st_size for name, path in paths.items()}
    # In a job, chunks arrive while the VAE decodes. Pace them as an H100 decodes 704x1280x121 (~2 s).
    writer = Mp4Writer(tmp / "paced.mp4", 1280, 704, 24)
    for chunk in chunks:
        writer.write(chunk)
        time.sleep(2.0 / len(chunks))
    tail_s = writer.close()
    return {
        "encode_project_s": round(times["project"], 2),
        "encode_mimsave_s": round(times["mimsave"], 2),
        "encode_export_to_video_s": round(times["export"], 2),
        "encode_project_mib": round(sizes["project"] / 2**20, 2),
        "encode_mimsave_mib": round(sizes["mimsave"] / 2**20, 2),
        "encode_export_to_video_mib": round(sizes["export"] / 2**20, 2),
        "encode_speedup_vs_mimsave": round(times["mimsave"] / times["project"], 2),
        "encode_speedup_vs_export_to_video": round(times["export"] / times["project"], 2),
        "encode_size_ratio_vs_mimsave": round(sizes["project"] / sizes["mimsave"], 3),
        "encode_tail_after_last_frame_s_2core": round(tail_s, 2),
    }


# ---------------------------------------------------------------- 2 and 4. queue mode: start-up, RSS, /health


def queue_bench(tmp: Path) -> dict:
    import httpx
    import psutil
    from support.procs import WorkerProcess, wait_health

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    worker = WorkerProcess.queue(tmp / "queue", port).start()
    try:
        wait_health(base, ("starting", "ready"), timeout_s=60)
        first_answer_s = time.perf_counter() - started
        wait_health(base, ("ready",), timeout_s=120)
        ready_s = time.perf_counter() - started
        time.sleep(1.0)  # settle: idle means idle
        parent = psutil.Process(worker.pid)
        parent_rss = parent.memory_info().rss / 2**20
        child_rss = sum(c.memory_info().rss for c in parent.children(recursive=True)) / 2**20
        latencies = _health_during_job(httpx, base)
    finally:
        worker.stop()
    return {
        "first_http_answer_s": round(first_answer_s, 2),
        "ready_s": round(ready_s, 2),
        "idle_rss_mb": round(parent_rss + child_rss, 1),
        "idle_rss_parent_mb": round(parent_rss, 1),
        "idle_rss_gpu_child_mb": round(child_rss, 1),
        "health_p50_ms": round(statistics.median(latencies), 2),
        "health_p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "health_max_ms": round(max(latencies), 2),
        "health_calls": len(latencies),
    }


def _health_during_job(httpx, base: str, calls: int = 100) -> list[float]:
    """100 /health calls while a CPU-heavy generation runs in the GPU child."""
    job = threading.Thread(target=lambda: httpx.post(f"{base}/generate", json={"prompt": "busy", **HEAVY}, timeout=600))
    job.start()
    with httpx.Client(base_url=base, timeout=5) as client:
        while client.get("/health").json()["status"] != "busy":
            time.sleep(0.01)
        time.sleep(1.0)  # well into denoising
        latencies = []
        for _ in range(calls):
            start = time.perf_counter()
            assert client.get("/health").json()["status"] == "busy", "the job ended before the measurement"
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(0.02)
    job.join()
    return latencies


# ---------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=30, help="jobs for the overhead comparison")
    parser.add_argument("--pipeline-jobs", type=int, default=10, help="jobs per arm of the pipelining comparison")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--only", choices=("buffer", "queue", "encoding", "pipelining"), help="run one section (default: all)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fastwan-bench-"))
    report: dict = {"machine": f"{os.cpu_count()} CPU cores, no GPU", "python": sys.version.split()[0]}
    sections = {
        "buffer": lambda: buffer_bench(tmp, args.jobs),
        "queue": lambda: queue_bench(tmp),
        "encoding": lambda: encode_bench(tmp),
        "pipelining": lambda: pipeline_bench(tmp, args.pipeline_jobs),
    }
    for name, section in sections.items():
        if args.only in (None, name):
            print(f"… {name}", flush=True)
            report.update(section())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print(f"written to {args.out}")


def buffer_bench(tmp: Path, jobs: int) -> dict:
    from bench_buffer import overhead_and_heartbeats

    return overhead_and_heartbeats(tmp, jobs, HEAVY, SMALL)


def pipeline_bench(tmp: Path, jobs: int) -> dict:
    from bench_pipeline import pipelining_bench

    return pipelining_bench(tmp, jobs, PIPELINE_JOB)


if __name__ == "__main__":
    main()
