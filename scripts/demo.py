"""`make demo` (`python scripts/demo.py`): the whole buffer-mode path on this machine, no GPU.

Starts the orchestrator stub (SQLite in .demo/, a random INTERNAL_API_KEY, a free loopback port), a
buffer-mode worker with the tiny model (the miniature FastWan trained on its synthetic world) and local
storage, and a loopback server for the input image; submits a text-to-video and an image-to-video job
through the stub's public API, shows what each asked for and its progress, prints where the MP4s are and
saves a contact sheet (a PNG strip of frames) beside each, with what the frames show measured against the
prompt, then stops both processes with SIGTERM. Exits non-zero if anything failed.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

DEMO_DIR = Path(".demo")
# The miniature's world at the size it was trained at (docs/miniature.md).
JOB = {"width": 128, "height": 128, "num_frames": 17, "fps": 8, "num_inference_steps": 3}
T2V_PROMPT = "a blue circle moving right"
I2V_PROMPT = "a green circle moving up"
I2V_IMAGE_SEED = 3  # where the input image puts the green circle
DEADLINE_S = 300.0
POLL_S = 0.25


class DemoFailed(Exception):
    """Something went wrong; the message says what, the logs in .demo/ say why."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and the exit code; SIGKILL if it does not stop in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise DemoFailed(f"{self.name} did not stop within {timeout_s:g}s after SIGTERM") from None


def main() -> int:
    root = DEMO_DIR.resolve()
    shutil.rmtree(root, ignore_errors=True)  # a fresh database, state and videos every run
    root.mkdir(parents=True)
    procs: list[Proc] = []
    try:
        with image_server() as image_url:
            run_demo(root, image_url, procs)
    except (DemoFailed, httpx.HTTPError) as exc:
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
        for proc in procs:
            print(f"\n--- last lines of {proc.log} ---\n{proc.tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
    return 0


def run_demo(root: Path, image_url: str, procs: list[Proc]) -> None:
    key, port = secrets.token_urlsafe(24), free_port()
    base = f"http://127.0.0.1:{port}"
    procs.append(start_stub(root, key, port))
    with httpx.Client(base_url=base, timeout=10) as http:
        wait_until(lambda: _healthy(http), 30, "the orchestrator stub to start")
        print(f"orchestrator stub on {base} (database {root / 'stub.sqlite3'})")
        procs.append(start_worker(root, key, base))
        print("buffer worker starting (loads the tiny model in its GPU process)…")
        jobs = demo_jobs(image_url)
        for mode, job in jobs.items():
            show_request(mode, job)
        job_ids = {mode: submit(http, job) for mode, job in jobs.items()}
        views = follow(http, job_ids, procs[1])
    report(views)
    stop_all(procs)


def demo_jobs(image_url: str) -> dict[str, dict[str, Any]]:
    return {
        "t2v": {**JOB, "prompt": T2V_PROMPT, "seed": 7},
        "i2v": {**JOB, "prompt": I2V_PROMPT, "seed": 8, "image_url": image_url},
    }


def show_request(mode: str, job: dict[str, Any]) -> None:
    image = f", starting from {job['image_url']}" if job.get("image_url") else ""
    print(
        f"  [{mode}] asked for {job['prompt']!r}: {job['width']}x{job['height']}, {job['num_frames']} frames "
        f"@ {job['fps']} fps, seed {job['seed']}{image}"
    )


def start_stub(root: Path, key: str, port: int) -> Proc:
    env = {"INTERNAL_API_KEY": key, "STUB_PORT": str(port), "STUB_DB": str(root / "stub.sqlite3")}
    return spawn("stub", [sys.executable, "-m", "orchestrator_stub", "--env-file", os.devnull], env, root)


def start_worker(root: Path, key: str, base: str) -> Proc:
    env = {
        "ORCHESTRATOR_BASE_URL": base,
        "INTERNAL_API_KEY": key,
        "PIPELINE_BACKEND": "tiny",
        "STORAGE_BACKEND": "local",
        "LOCAL_OUTPUT_DIR": str(root),
        "STATE_DIR": str(root / "state"),
        "ALLOW_PRIVATE_IMAGE_URLS": "true",
        "BUFFER_WORKER_ID": "demo-worker",
        "CLAIM_POLL_S": "0.5",
    }
    return spawn("worker", [sys.executable, "-m", "worker_app_fastwan", "buffer"], env, root)


def spawn(name: str, argv: list[str], env: dict[str, str], root: Path) -> Proc:
    log = root / f"{name}.log"
    repo = Path(__file__).resolve().parents[1]
    # cwd is .demo/: neither process reads the checkout's .env, so the demo runs the same everywhere.
    full_env = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
    }
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, env=full_env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    return Proc(name, popen, log)


def submit(http: httpx.Client, job: dict[str, Any]) -> str:
    response = http.post("/v1/jobs", json=job)
    if response.status_code != 201:
        raise DemoFailed(f"POST /v1/jobs answered {response.status_code}: {response.text}")
    return response.json()["job_id"]


def follow(http: httpx.Client, job_ids: dict[str, str], worker: Proc) -> dict[str, dict[str, Any]]:
    """Print each job's progress as it changes, until both are final; returns their last views."""
    shown: dict[str, tuple[Any, ...]] = {}
    deadline = time.monotonic() + DEADLINE_S
    while True:
        views = {mode: http.get(f"/v1/jobs/{job_id}").json() for mode, job_id in job_ids.items()}
        for mode, view in views.items():
            line = (view["status"], view["stage"], view["step"], round(view["progress"] * 100))
            if shown.get(mode) != line:
                shown[mode] = line
                print(f"  [{mode}] {describe(view)}")
        if all(v["status"] in ("completed", "failed") for v in views.values()):
            return views
        if worker.popen.poll() is not None:
            raise DemoFailed(f"the worker exited with code {worker.popen.returncode} before the jobs were done")
        if time.monotonic() > deadline:
            raise DemoFailed(f"the jobs were not done within {DEADLINE_S:g}s")
        time.sleep(POLL_S)


def describe(view: dict[str, Any]) -> str:
    steps = f" step {view['step']}/{view['total_steps']}" if view["step"] is not None and view["total_steps"] else ""
    stage = f" {view['stage']}{steps}" if view["status"] in ("claimed", "running") else ""
    return f"{view['status']}{stage} {view['progress'] * 100:.0f}%"


def report(views: dict[str, dict[str, Any]]) -> None:
    failed = {mode: v["error"] for mode, v in views.items() if v["status"] != "completed"}
    if failed:
        raise DemoFailed(f"job(s) failed: {failed}")
    print("\nvideos:")
    for mode, view in views.items():
        result = view["result"]
        path = Path(result["video_url"].removeprefix("file://"))
        frames = count_frames(path)
        if frames != result["num_frames"]:
            raise DemoFailed(f"{path} has {frames} frames, the result says {result['num_frames']}")
        sheet, shows = contact_sheet_and_reading(path, view["input"]["prompt"])
        print(
            f"  {mode}: {path}\n       {path.stat().st_size:,} bytes, {frames} frames, "
            f"{result['width']}x{result['height']} @ {result['fps']} fps, seed {result['seed']}, "
            f"{result['timings']['total_s']:.1f}s in the worker\n"
            f"       contact sheet {sheet}\n       {shows}"
        )


def contact_sheet_and_reading(path: Path, prompt: str) -> tuple[Path, str]:
    """The strip of frames beside the MP4, and what its frames show against what the prompt asked."""
    from worker_app_fastwan.miniature.measure import measure
    from worker_app_fastwan.miniature.sheet import contact_sheet, read_frames
    from worker_app_fastwan.miniature.world import parse_prompt

    frames = read_frames(path)
    sheet = path.with_suffix(".png")
    contact_sheet(frames).save(sheet, optimize=True)
    found = measure(frames)
    spec = parse_prompt(prompt)
    seen = f"shows a {found.colour} {found.shape}, {found.motion}" if found.colour else "shows no object"
    if spec is None:
        return sheet, seen
    wrong = [name for name, right in found.verdict(spec).items() if not right]
    return sheet, f"{seen}: {'as asked' if not wrong else 'NOT as asked (' + ', '.join(wrong) + ')'}"


def count_frames(path: Path) -> int:
    import imageio_ffmpeg

    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))  # ffmpeg decodes the whole stream to count
    return int(frames)


def stop_all(procs: list[Proc]) -> None:
    for proc in reversed(procs):  # the worker first: it drains and reports to a stub that is still up
        code = proc.stop()
        if code == 0:
            print(f"{proc.name} stopped cleanly (exit 0)")
        elif proc.name == "stub" and code == -signal.SIGTERM and "Application shutdown complete" in proc.tail():
            # uvicorn re-raises SIGTERM once its own clean shutdown is complete (orchestrator_stub/cli.py).
            print(f"{proc.name} stopped cleanly (uvicorn re-raised SIGTERM after its shutdown: exit {code})")
        else:
            raise DemoFailed(f"{proc.name} exited with code {code} after SIGTERM")


# ---- helpers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.1)


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def image_server() -> Iterator[str]:
    """A generated PNG on a loopback HTTP server, for the image-to-video job; yields its URL."""
    png = demo_png()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/input.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/input.png"
    finally:
        server.shutdown()
        server.server_close()


def demo_png() -> bytes:
    """A first frame of the miniature's world: the green circle the image-to-video prompt moves up."""
    from PIL import Image

    from worker_app_fastwan.miniature.world import first_frame, parse_prompt

    spec = parse_prompt(I2V_PROMPT)
    assert spec is not None
    buf = io.BytesIO()
    Image.fromarray(first_frame(spec, JOB["width"], JOB["height"], seed=I2V_IMAGE_SEED)).save(buf, "PNG")
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
