"""`make studio` (`python -m orchestrator_stub.studio`): the page with a real worker on this machine, no GPU.

Starts the orchestrator stub and one buffer-mode worker with the tiny model (the real diffusers Wan classes,
the miniature FastWan trained here: videos of its synthetic world, the path is production's) and local
storage, prints the page's URL, and runs until Ctrl-C (SIGINT) or SIGTERM; then it stops the worker (it
finishes or hands back its job and reports) and the stub, each with SIGTERM, and exits 0 when both stopped cleanly.

Jobs, videos and uploads stay in the folder (`.studio/` by default) from one run to the next. The worker
downloads uploaded images from the stub's own origin without ALLOW_PRIVATE_IMAGE_URLS, as on a real box.
STUB_PASSWORD, if set in the environment, is passed to the stub.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from worker_app_fastwan.core.exit_codes import ExitCode

FORM_DEFAULTS = {"width": 128, "height": 128, "num_frames": 17, "fps": 8, "prompt": "a blue circle moving right"}
STOP_TIMEOUT_S = 90.0
START_TIMEOUT_S = 60.0


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        """SIGTERM, then the exit status; SIGKILL (and -9) if it does not stop within STOP_TIMEOUT_S."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = args.port if args.port and _port_free(args.port) else _free_port()
    base = f"http://127.0.0.1:{port}"
    key = secrets.token_urlsafe(24)  # a fresh worker key each run: only this run's worker knows it
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    children: list[Child] = []
    try:
        children.append(_spawn("stub", [sys.executable, "-m", "orchestrator_stub"], _stub_env(root, key, port), root))
        if not _wait_healthy(base, children[0], stop):
            return _fail(children, "the stub did not start")
        worker_env = _worker_env(root, key, base)
        children.append(_spawn("worker", [sys.executable, "-m", "worker_app_fastwan", "buffer"], worker_env, root))
        print(f"studio: {base}/", flush=True)
        print(
            f"  stub and tiny-model worker running; data in {root}; logs stub.log, worker.log; Ctrl-C stops", flush=True
        )
        while not stop.wait(0.5):
            dead = next((c for c in children if c.popen.poll() is not None), None)
            if dead is not None:
                return _fail(children, f"the {dead.name} exited with status {dead.popen.returncode}")
    finally:
        codes = {child.name: child.stop() for child in reversed(children)}  # the worker first: it reports to the stub
    bad = {name: code for name, code in codes.items() if code != 0}
    print("studio: stopped" + (f" (unclean: {bad})" if bad else " cleanly"), flush=True)
    return int(ExitCode.OK if not bad else ExitCode.FAILED)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="orchestrator_stub.studio", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".studio", help="database, videos, uploads, logs (default: .studio)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STUDIO_PORT", "8080")),
                        help="the stub's port (default: STUDIO_PORT or 8080; 0 picks a free one)")  # fmt: skip
    return parser.parse_args(argv)


def _stub_env(root: Path, key: str, port: int) -> dict[str, str]:
    env = {
        "INTERNAL_API_KEY": key,
        "STUB_PORT": str(port),
        "STUB_DB": str(root / "stub.sqlite3"),
        "STUB_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LOCAL_OUTPUT_DIR": str(root / "outputs"),
        "UPLOAD_DIR": str(root / "uploads"),
        "LEASE_SECONDS": "30",
        # The form starts with a job of the miniature's world (docs/miniature.md), which the tiny model draws.
        "STUB_FORM_DEFAULTS": json.dumps(FORM_DEFAULTS),
    }
    if os.environ.get("STUB_PASSWORD"):
        env["STUB_PASSWORD"] = os.environ["STUB_PASSWORD"]
    return env


def _worker_env(root: Path, key: str, base: str) -> dict[str, str]:
    return {
        "WORKER_MODE": "buffer",
        "ORCHESTRATOR_BASE_URL": base,
        "INTERNAL_API_KEY": key,
        "PIPELINE_BACKEND": "tiny",
        "STORAGE_BACKEND": "local",
        "LOCAL_OUTPUT_DIR": str(root / "outputs"),
        "STATE_DIR": str(root / "state"),
        "BUFFER_WORKER_ID": "studio-worker",
        "GPU_CLASS": "cpu-tiny",
        "CLAIM_POLL_S": "0.5",
        # On loopback a beat costs nothing, and a cancel pressed on the page reaches the worker with the next one.
        "HEARTBEAT_INTERVAL_S": "1",
        "PROGRESS_MIN_INTERVAL_S": "0.2",
        "ALLOW_PRIVATE_IMAGE_URLS": "false",
    }


def _spawn(name: str, argv: list[str], env: dict[str, str], root: Path) -> Child:
    log = root / f"{name}.log"
    repo = Path(__file__).resolve().parents[1]
    # Neither process reads a .env (cwd is the studio folder) and neither gets the terminal's Ctrl-C (own
    # session): this process stops them, worker first, whatever the signal reached.
    pythonpath = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    inherited = {k: v for k, v in os.environ.items() if k != "STUB_PASSWORD"}  # only the stub needs it
    full_env = {**inherited, **env, "PYTHONPATH": pythonpath}
    out: IO[bytes]
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv, env=full_env, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Child(name, popen, log)


def _wait_healthy(base: str, stub: Child, stop: threading.Event) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=1) as http:  # one client: each new one builds an SSL context (~30 ms of CPU)
        while time.monotonic() < deadline and not stop.is_set() and stub.popen.poll() is None:
            try:
                if http.get(f"{base}/health").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    return False


def _fail(children: list[Child], what: str) -> int:
    print(f"studio: {what}; see the logs:", file=sys.stderr)
    for child in children:
        tail = child.log.read_text(errors="replace").splitlines()[-15:] if child.log.exists() else []
        print(f"--- {child.log} ---\n" + "\n".join(tail), file=sys.stderr)
    return int(ExitCode.FAILED)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
