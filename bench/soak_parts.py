"""Pieces of the chaos run (bench/soak.py): a TCP proxy that can refuse connections, a webhook receiver,
and a supervised process. Nothing here knows about jobs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CuttableProxy:
    """127.0.0.1:`port` → 127.0.0.1:`target` (a list: each new connection to the next one in turn that accepts
    it, as a load balancer in front of stub replicas). `cut()` closes the listener and every open connection, so
    connecting is refused (ECONNREFUSED) until `restore()` listens on the same port again."""

    def __init__(self, target: int | list[int]) -> None:
        self.targets = [target] if isinstance(target, int) else list(target)
        self._turn = 0
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = self._connect()
            if upstream is None:
                _close(client)  # every stub is down: the worker sees the connection closed
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        for _ in self.targets:
            self._turn = (self._turn + 1) % len(self.targets)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.targets[self._turn]), timeout=5)
            except OSError:
                continue  # that replica is down: the next one
            upstream.settimeout(None)
            return upstream
        return None

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _close(s)
            with self._lock:
                self._conns -= {src, dst}


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class WebhookReceiver:
    """Records every webhook delivery per job; checks each one's signature with the Standard Webhooks library
    (the secret is a hex one from before the standard form: its UTF-8 bytes are the key)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.deliveries: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    Webhook(receiver.secret).verify(raw, dict(self.headers.items()))
                except WebhookVerificationError:
                    receiver.bad_signatures += 1
                body = json.loads(raw)
                receiver.deliveries[body["job_id"]].append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"


class Proc:
    """A restartable child process logging to `folder/<name>.log`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], folder: Path) -> None:
        self.name, self.argv, self.env, self.folder = name, argv, env, folder
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.name}.log"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole session: the GPU child and any ffmpeg die too, as on a lost machine."""
        if self.proc is not None and self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout_s: float) -> int | None:
        """SIGTERM (a drain) and the exit status, or None if it outlived `timeout_s` (then it is killed)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if f'"{name}"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                found.append(event)
        return found


def wait_until(check: Any, timeout_s: float, interval_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return False
