"""How fast the miniature makes a clip: the `tiny` backend's `generate` at 128x128x17 (the issue's target:
at most 1.5 s on 2 cores), and the `generate` command end to end.

    python bench/miniature_speed.py            # 10 clips in this process, then one `generate` command
    python bench/miniature_speed.py --size 256x256x33

In-process: `TinyBackend.load()` once, then per clip `generate()` with every frame decoded and the MP4 written
(`encoder.encode_mp4`, as the GPU child does), wall and CPU time of each. The command: `python -m
worker_app_fastwan generate --json` in a fresh process (model load included), its wall time and the
result's own timings. Prints the figures and writes bench/results/miniature_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "miniature_speed.json"
PROMPT = "a red square moving left"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="128x128x17")
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    width, height, frames = (int(v) for v in args.size.split("x"))

    import torch

    from worker_app_fastwan.core.schema import JobInput
    from worker_app_fastwan.gpu_child.encoder import encode_mp4
    from worker_app_fastwan.pipelines.tiny import TinyBackend

    started = time.perf_counter()
    backend = TinyBackend()
    backend.load()
    backend.warmup()
    load_s = time.perf_counter() - started
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.clips):
            job = JobInput(prompt=PROMPT, width=width, height=height, num_frames=frames, seed=seed)
            wall0, cpu0 = time.perf_counter(), cpu_s()
            generation = backend.generate(job, None, lambda *_: None)
            encode_mp4(generation.frames, Path(tmp) / f"{seed}.mp4", width, height, job.fps)
            walls.append(time.perf_counter() - wall0)
            cpus.append(cpu_s() - cpu0)
        print(
            f"in-process generate + MP4 at {args.size}, {torch.get_num_threads()} torch threads: "
            f"median {statistics.median(walls):.2f} s wall ({min(walls):.2f}-{max(walls):.2f}), "
            f"{statistics.median(cpus):.2f} s CPU; model load + warm-up {load_s:.1f} s"
        )
        command = [
            sys.executable, "-m", "worker_app_fastwan", "generate", "--prompt", PROMPT, "--width", str(width),
            "--height", str(height), "--frames", str(frames), "--seed", "1", "--json", "--out",
            str(Path(tmp) / "cli.mp4"),
        ]  # fmt: skip
        env = {**os.environ, "PIPELINE_BACKEND": "tiny", "STORAGE_BACKEND": "local", "LOCAL_OUTPUT_DIR": tmp}
        wall0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp, timeout=300, check=True)
        command_s = time.perf_counter() - wall0
    result = json.loads(done.stdout)
    timings = result["timings"]
    print(
        f"`generate` command: {command_s:.1f} s in all (process start and model load included); the job's own "
        f"timings: inference {timings['inference_s']:.2f} s, encode {timings['encode_s']:.2f} s, "
        f"total {timings['total_s']:.2f} s"
    )
    report = {
        "size": args.size,
        "torch_threads": torch.get_num_threads(),
        "in_process_median_wall_s": round(statistics.median(walls), 3),
        "in_process_wall_s": [round(w, 3) for w in walls],
        "in_process_median_cpu_s": round(statistics.median(cpus), 3),
        "load_and_warmup_s": round(load_s, 2),
        "command_wall_s": round(command_s, 2),
        "command_timings": timings,
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
