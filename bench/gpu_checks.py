"""Every GPU figure issue 24 asks for, in one call on a lent H100/H200: full-size random weights, one JSON.

No weights can be downloaded on the lent machine, so a diffusers-format folder of the published configs
with random weights is written first (transformer and UMT5-XXL in bf16, the VAE in fp32: ≈ 24 GB on local
disk, never under the output folder); the worker loads it through `MODEL_PATH` exactly as it would load the
checkpoint. Then, each stage in a process of its own (this one never imports torch, so it never holds GPU
memory a stage needs):

- `doctor`:  `python -m worker_app_fastwan doctor --load --generate` (OFFLOAD_PROFILE=auto): every line;
- `buffer`:  per profile (`low_vram`, `balanced`, `none`), the orchestrator stub and a buffer worker, and three
             full-size jobs through them: a good one, one cancelled mid-denoise, a good one again. For each:
             status, timings, the worker's load time, the card's peak memory (nvidia-smi, sampled) and its
             memory once the job is over (item 1: a cancelled job must leave nothing behind), and the box's
             host memory (the worker's processes, summed) while it loads (item 3);
- `vae`:     the full-size VAE decode, streamed and tiled, with cuDNN autotuning off and on, each cold and
             warm, with its peak memory (item 8: does autotuning pay off, and what workspace does it take);
- `bench`:   `bench/gpu_bench.py` (plain diffusers call vs the project's path), then with --cudnn-benchmark.

Stages run in that order while the time budget (`--budget-s`) lasts; one that would not fit is recorded
as skipped, and the JSON is rewritten after every stage, so a run cut short still returns what it measured.
`--only` picks stages; a second call can run the rest (the model folder is reused when it is there).

    python bench/gpu_checks.py --out $OUT --budget-s 540          # on the lent GPU (BENCHMARKS.md)
    python bench/gpu_checks.py --scale tiny --device cpu --out /tmp/gc --budget-s 900   # the plumbing, on CPU

Writes `<out>/gpu_checks.json` and the tail of every process's log under `<out>/logs/`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
STAGES = ("model", "doctor", "buffer", "vae", "bench")
PROFILES = ("low_vram", "balanced", "none")
API_KEY = "gpu-checks-internal-key"
# What a stage is expected to take on an H100 with full-size weights (for the budget; the tiny scale is far less).
ESTIMATE_S = {"model": 90, "doctor": 100, "buffer_profile": 110, "vae": 90, "bench": 120, "bench_cudnn": 110}
FULL_SIZE = (1280, 704, 121)
TINY_SIZE = (256, 256, 9)
LOG_TAIL = 20_000
SETTLE_S = 2.0


# ---------------------------------------------------------------- the orchestrating process (no torch here)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.monotonic()
        self.out = Path(args.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.report: dict[str, Any] = {
            "scale": args.scale,
            "device": args.device,
            "budget_s": args.budget_s,
            "size": "x".join(map(str, self.size)),
            "host": socket.gethostname(),
            "gpu": _nvidia_smi_names(),
            "stages": {},
        }

    @property
    def size(self) -> tuple[int, int, int]:
        return FULL_SIZE if self.args.scale == "full" else TINY_SIZE

    def left_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def fits(self, estimate_s: float) -> bool:
        return self.args.scale != "full" or self.left_s() >= estimate_s

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "gpu_checks.json").write_text(json.dumps(self.report, indent=2, default=str))

    def stage(self, name: str, body: Callable[[], dict[str, Any]], estimate_s: float) -> None:
        if self.args.only and name not in self.args.only:
            return
        if not self.fits(estimate_s):
            self.report["stages"][name] = {"skipped": f"{self.left_s():.0f} s left, needs ≈ {estimate_s} s"}
            self.save()
            return
        began = time.monotonic()
        try:
            result = body()
        except Exception as exc:  # noqa: BLE001 - a failed stage is a finding; the next ones still run
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["wall_s"] = round(time.monotonic() - began, 1)
        self.report["stages"][name] = result
        self.save()
        print(f"[gpu_checks] {name}: {json.dumps(result, default=str)[:600]}", flush=True)

    def child_env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "LOG_FORMAT": "json"})
        if self.args.device == "cpu":
            env.update({"ALLOW_CPU_INFERENCE": "true", "CUDA_VISIBLE_DEVICES": ""})
        env.update(extra)
        return env

    def in_child(self, stage: str, timeout_s: float) -> dict[str, Any]:
        """Run `stage` of this script in a process of its own; its JSON result."""
        result = self.work / f"{stage}.json"
        cmd = [sys.executable, str(Path(__file__)), "--run-stage", stage, "--stage-out", str(result)]
        cmd += ["--scale", self.args.scale, "--device", self.args.device, "--model", str(self.model)]
        done = _run(cmd, self.child_env(), self.logs / f"{stage}.log", timeout_s)
        if result.exists():
            return {**json.loads(result.read_text()), "exit_code": done}
        return {"error": f"exit code {done}, no result (see logs/{stage}.log)"}

    @property
    def work(self) -> Path:
        folder = Path(self.args.work)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def model(self) -> Path:
        return self.work / "random-model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(BENCH / "results" / "gpu_checks"))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fastwan-gpu-checks"))
    parser.add_argument("--budget-s", type=float, default=540.0)
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()], default=None)
    parser.add_argument("--profiles", type=lambda s: s.split(","), default=list(PROFILES))
    parser.add_argument("--run-stage", help=argparse.SUPPRESS)
    parser.add_argument("--stage-out", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_stage:
        return _stage_main(args)
    run = Run(args)
    run.stage("model", lambda: _model_stage(run), ESTIMATE_S["model"])
    run.stage("doctor", lambda: _doctor_stage(run), ESTIMATE_S["doctor"])
    run.stage("buffer", lambda: _buffer_stage(run), ESTIMATE_S["buffer_profile"])
    run.stage("vae", lambda: run.in_child("vae", max(run.left_s() - 5, 30)), ESTIMATE_S["vae"])
    run.stage("bench", lambda: _bench_stage(run), ESTIMATE_S["bench"])
    run.save()
    print(f"[gpu_checks] wrote {run.out / 'gpu_checks.json'} in {time.monotonic() - run.start:.0f} s", flush=True)
    return 0


def _model_stage(run: Run) -> dict[str, Any]:
    marker = run.model / ".complete"
    if marker.exists() and json.loads(marker.read_text()).get("scale") == run.args.scale:
        return {"reused": str(run.model), **json.loads(marker.read_text())}
    shutil.rmtree(run.model, ignore_errors=True)
    return run.in_child("model", max(run.left_s() - 5, 60))


def _doctor_stage(run: Run) -> dict[str, Any]:
    state = run.work / "doctor"
    env = run.child_env(
        PIPELINE_BACKEND="diffusers",
        MODEL_PATH=str(run.model),
        STORAGE_BACKEND="local",
        STATE_DIR=str(state / "state"),
        LOCAL_OUTPUT_DIR=str(state / "videos"),
        WORKER_MODE="queue",
    )
    log = run.logs / "doctor.log"
    began = time.monotonic()
    code = _run(
        [sys.executable, "-m", "worker_app_fastwan", "doctor", "--load", "--generate"],
        env,
        log,
        max(run.left_s() - 5, 30),
    )
    lines = [line for line in log.read_text(errors="replace").splitlines() if line[:1] in ("✓", "✗", "!", "–")]
    return {"exit_code": code, "lines": lines, "wall_s": round(time.monotonic() - began, 1)}


def _bench_stage(run: Run) -> dict[str, Any]:
    results: dict[str, Any] = {}
    size = [] if run.args.scale == "full" else ["--width", "256", "--height", "256", "--frames", "9"]
    scale = ["--scale", run.args.scale, "--device", run.args.device, *size]
    for name, extra, estimate in (
        ("default", [], 0),
        ("cudnn_benchmark", ["--cudnn-benchmark"], ESTIMATE_S["bench_cudnn"]),
    ):
        if estimate and not run.fits(estimate):
            results[name] = {"skipped": f"{run.left_s():.0f} s left"}
            continue
        out = run.work / f"gpu_bench_{name}.json"
        cmd = [sys.executable, str(BENCH / "gpu_bench.py"), *scale, *extra, "--out", str(out)]
        code = _run(cmd, run.child_env(), run.logs / f"gpu_bench_{name}.log", max(run.left_s() - 5, 30))
        results[name] = json.loads(out.read_text()) if out.exists() else {"error": f"exit code {code}"}
    return results


# ---------------------------------------------------------------- buffer mode, per profile


def _buffer_stage(run: Run) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for profile in run.args.profiles:
        if not run.fits(ESTIMATE_S["buffer_profile"]):
            results[profile] = {"skipped": f"{run.left_s():.0f} s left"}
            continue
        try:
            results[profile] = _buffer_profile(run, profile)
        except Exception as exc:  # noqa: BLE001 - recorded; the next profile still runs
            results[profile] = {"error": f"{type(exc).__name__}: {exc}"}
        run.report["stages"]["buffer"] = results
        run.save()
    return results


def _buffer_profile(run: Run, profile: str) -> dict[str, Any]:
    import httpx

    folder = run.work / f"buffer-{profile}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    stub_env = run.child_env(
        INTERNAL_API_KEY=API_KEY,
        STUB_PORT=str(port),
        STUB_DB=str(folder / "stub.sqlite3"),
        LEASE_SECONDS="120",
        LOCAL_OUTPUT_DIR=str(folder / "videos"),
    )
    worker_env = run.child_env(
        WORKER_MODE="buffer",
        ORCHESTRATOR_BASE_URL=url,
        INTERNAL_API_KEY=API_KEY,
        BUFFER_WORKER_ID=f"gpu-checks-{profile}",
        PIPELINE_BACKEND="diffusers",
        MODEL_PATH=str(run.model),
        OFFLOAD_PROFILE=profile,
        STORAGE_BACKEND="local",
        STATE_DIR=str(folder / "state"),
        LOCAL_OUTPUT_DIR=str(folder / "videos"),
        HEARTBEAT_INTERVAL_S="0.5",  # a cancel reaches the worker with its next heartbeat
        CLAIM_POLL_S="0.2",
        PROGRESS_MIN_INTERVAL_S="0",
        JOB_TIMEOUT_S="600",
    )
    stub_log, worker_log = run.logs / f"stub-{profile}.log", run.logs / f"worker-{profile}.log"
    stub = _start([sys.executable, "-m", "orchestrator_stub", "--env-file", os.devnull], stub_env, stub_log, folder)
    worker = None
    result: dict[str, Any] = {"profile": profile}
    try:
        http = httpx.Client(base_url=url, timeout=10)
        _until(lambda: _get_ok(http, "/health"), 30, "the stub")
        vram = VramSampler()
        host = HostMemorySampler()
        worker = _start([sys.executable, "-m", "worker_app_fastwan", "buffer"], worker_env, worker_log, folder)
        host.watch(worker.pid)
        began = time.monotonic()
        ready = _until(lambda: _event(worker_log, "claiming jobs") or _dead(worker), run.left_s() - 10, "the model")
        if ready == "dead":
            return {**result, "error": "the worker exited while loading", "log_tail": _tail(worker_log, 3000)}
        loaded = _event(worker_log, "model ready") or {}
        result["load"] = {
            "ready_s": round(time.monotonic() - began, 1),
            "load_s": loaded.get("load_s"),
            "host_rss_peak_gib": host.peak_gib(),
            "vram_after_load_mib": vram.now_mib(),
        }
        host.stop()
        width, height, frames = run.size
        job = {"width": width, "height": height, "num_frames": frames, "num_inference_steps": 3}
        result["good_1"] = _job(http, vram, {**job, "prompt": "a red fox running through snow", "seed": 1})
        result["cancelled"] = _job(http, vram, {**job, "prompt": "a lighthouse at dusk", "seed": 2}, cancel_at_step=1)
        result["good_2"] = _job(http, vram, {**job, "prompt": "a red fox running through snow", "seed": 3})
        queue = http.get("/v1/queue").json()
        result["worker"] = next((w for w in queue.get("workers", []) if w.get("worker_id", "").endswith(profile)), None)
        vram.stop()
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            _wait(worker, 60)
        stub.send_signal(signal.SIGTERM)
        _wait(stub, 10)
        _keep_tail(stub_log)
        _keep_tail(worker_log)
    return result


def _job(http: Any, vram: VramSampler, body: dict[str, Any], cancel_at_step: int | None = None) -> dict[str, Any]:
    vram.reset_peak()
    began = time.monotonic()
    job_id = http.post("/v1/jobs", json=body).json()["job_id"]
    cancel_sent, cancelled_at = None, None
    while True:
        view = http.get(f"/v1/jobs/{job_id}").json()
        if view["status"] in ("completed", "failed"):
            break
        if cancel_at_step is not None and cancel_sent is None and view.get("stage") == "denoising":
            if (view.get("step") or 0) >= cancel_at_step:
                http.post(f"/v1/jobs/{job_id}/cancel")
                cancel_sent, cancelled_at = time.monotonic(), {"stage": view["stage"], "step": view.get("step")}
        if time.monotonic() - began > 600:
            return {"job_id": job_id, "error": "no final status in 600 s", "last": view}
        time.sleep(0.1)
    time.sleep(SETTLE_S)  # the worker frees memory after a failed job, then the card settles
    result = view.get("result") or {}
    return {
        "job_id": job_id,
        "status": view["status"],
        "error": view.get("error"),
        "wall_s": round(time.monotonic() - began, 1),
        "cancel_sent_at": cancelled_at,
        "cancel_to_final_s": None if cancel_sent is None else round(time.monotonic() - SETTLE_S - cancel_sent, 1),
        "timings": result.get("timings"),
        "bytes": result.get("bytes"),
        "vram_peak_mib": vram.peak_mib(),
        "vram_after_mib": vram.now_mib(),
    }


class VramSampler:
    """The card's used memory as nvidia-smi reports it (every process on it), every 0.2 s."""

    def __init__(self) -> None:
        self.smi = shutil.which("nvidia-smi")
        self._peak = 0
        self._now = 0
        self._stop = threading.Event()
        if self.smi:
            threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            used = _smi_used_mib(self.smi)
            if used is not None:
                self._now, self._peak = used, max(self._peak, used)
            time.sleep(0.2)

    def reset_peak(self) -> None:
        self._peak = self._now

    def peak_mib(self) -> int | None:
        return self._peak if self.smi else None

    def now_mib(self) -> int | None:
        return _smi_used_mib(self.smi) if self.smi else None

    def stop(self) -> None:
        self._stop.set()


class HostMemorySampler:
    """The resident memory of a process and all its descendants (the worker and its GPU process), summed."""

    def __init__(self) -> None:
        self._peak = 0
        self._stop = threading.Event()

    def watch(self, pid: int) -> None:
        threading.Thread(target=self._loop, args=(pid,), daemon=True).start()

    def _loop(self, pid: int) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _tree_rss_bytes(pid))
            time.sleep(0.25)

    def peak_gib(self) -> float:
        return round(self._peak / 2**30, 2)

    def stop(self) -> None:
        self._stop.set()


def _tree_rss_bytes(root: int) -> int:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        rss[int(entry.name)] = next(
            (int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
    tree, changed = {root}, True
    while changed:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        changed, tree = grown != tree, grown
    return sum(rss.get(pid, 0) for pid in tree)


# ---------------------------------------------------------------- helpers


def _run(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> int | None:
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
        finally:
            _keep_tail(log)


def _start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _dead(proc: subprocess.Popen[bytes]) -> str | None:
    return "dead" if proc.poll() is not None else None


def _until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not ready in {timeout_s:.0f} s")


def _get_ok(http: Any, path: str) -> bool:
    try:
        return http.get(path, timeout=1).status_code == 200
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _event(log: Path, name: str) -> dict[str, Any] | None:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{name}' in line:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if str(record.get("event", "")).startswith(name):
                return record
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keep_tail(log: Path) -> None:
    """Only the end of a log comes back: what failed, and the last figures."""
    if log.exists() and log.stat().st_size > LOG_TAIL:
        tail = log.read_bytes()[-LOG_TAIL:]
        log.write_bytes(b"[...]\n" + tail)


def _tail(log: Path, chars: int) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def _smi_used_mib(smi: str | None) -> int | None:
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return int(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def _nvidia_smi_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    out = subprocess.run(
        [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], capture_output=True, text=True
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------- stages that import torch (own processes)


def _stage_main(args: argparse.Namespace) -> int:
    body = {"model": _write_model, "vae": _vae_decode}[args.run_stage]
    result = body(args)
    Path(args.stage_out).write_text(json.dumps(result, indent=2, default=str))
    return 0


def _write_model(args: argparse.Namespace) -> dict[str, Any]:
    """The published configs with random weights, saved as the checkpoint's diffusers folder."""
    import torch

    folder = Path(args.model)
    began = time.monotonic()
    if args.scale == "tiny":
        from worker_app_fastwan.pipelines.tiny import save_tiny_model

        save_tiny_model(folder)
    else:
        sys.path.insert(0, str(BENCH))
        import gpu_bench

        from worker_app_fastwan.pipelines.dmd import make_scheduler

        device = torch.device(args.device)
        transformer, vae, text_dim = gpu_bench.build("full", device, torch.bfloat16, torch.float32)
        transformer.save_pretrained(folder / "transformer", max_shard_size="5GB")
        vae.save_pretrained(folder / "vae")
        del transformer, vae
        tokenizer, text_encoder = gpu_bench.text_encoder_parts("full", device, torch.bfloat16, text_dim, True)
        text_encoder.save_pretrained(folder / "text_encoder", max_shard_size="5GB")
        tokenizer.save_pretrained(folder / "tokenizer")
        make_scheduler().save_pretrained(folder / "scheduler")
        (folder / "model_index.json").write_text('{"_class_name": "WanPipeline", "_diffusers_version": "0.42.1"}\n')
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    info = {"scale": args.scale, "bytes": size, "write_s": round(time.monotonic() - began, 1)}
    (folder / ".complete").write_text(json.dumps(info))
    return info


def _vae_decode(args: argparse.Namespace) -> dict[str, Any]:
    """The full-size VAE decode (fp32 encoder side, bf16 decoder, as the worker runs it), streamed per latent
    frame and tiled, with cuDNN autotuning off then on: each cold (the first decode of that size in that
    mode) and warm, with the peak memory the allocator saw (cuDNN's workspaces included)."""
    import torch

    sys.path.insert(0, str(BENCH))
    import gpu_bench

    from worker_app_fastwan.pipelines.diffusers_backend import set_vae_precision
    from worker_app_fastwan.pipelines.tuning import cuda_math_settings
    from worker_app_fastwan.pipelines.wan import WanGenerator, WanParts

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    scale = "full" if args.scale == "full" else "tiny"
    transformer, _, text_dim = gpu_bench.build("tiny", device, torch.float32, torch.float32)
    vae = gpu_bench.build_vae(scale, device, torch.float32)
    set_vae_precision(vae, torch.float32, torch.bfloat16 if cuda else torch.float32)
    tokenizer, text_encoder = gpu_bench.text_encoder_parts("tiny", device, torch.float32, text_dim, False)
    gen = WanGenerator(WanParts(tokenizer, text_encoder, transformer, vae), device)
    width, height, frames = FULL_SIZE if args.scale == "full" else TINY_SIZE
    other = (832, 480, 81) if args.scale == "full" else (288, 256, 9)

    def latents(w: int, h: int, f: int) -> torch.Tensor:
        return torch.randn(1, 48, (f - 1) // 4 + 1, h // 16, w // 16, device=device, generator=None)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def decode(z: torch.Tensor, tiled: bool) -> dict[str, float | None]:
        (vae.enable_tiling if tiled else vae.disable_tiling)()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        began = time.perf_counter()
        for _ in gen.decode_stream(z):
            pass
        sync()
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return {"s": round(time.perf_counter() - began, 3), "peak_gib": None if peak is None else round(peak, 2)}

    decode(latents(256, 256, 5), tiled=False)  # CUDA's own start-up, out of every figure below
    result: dict[str, Any] = {"size": f"{width}x{height}x{frames}", "second_size": "x".join(map(str, other))}
    if cuda:
        result["cudnn"] = torch.backends.cudnn.version()
    for mode in (False, True):
        cuda_math_settings(cudnn_benchmark=mode)
        figures: dict[str, Any] = {}
        for tiled in (False, True):
            kind = "tiled" if tiled else "streamed"
            z = latents(width, height, frames)
            figures[f"{kind}_cold"] = decode(z, tiled)
            figures[f"{kind}_warm"] = decode(z, tiled)
        z = latents(*other)
        figures["streamed_second_size_cold"] = decode(z, False)
        figures["streamed_second_size_warm"] = decode(z, False)
        result["cudnn_benchmark" if mode else "cudnn_heuristics"] = figures
    return result


if __name__ == "__main__":
    sys.exit(main())
