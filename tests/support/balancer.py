"""A TCP load balancer on loopback, in front of stub replicas: each new connection goes to the next replica in
turn, and one whose port refuses the connection (a killed replica) is skipped, as a real balancer's health
check would take it out. A connection already open to a replica that dies is cut with it: the client sees
the error and retries, on a new connection, which lands on a live replica.

    with Balancer([a.port, b.port]) as lb:
        worker = WorkerProcess.buffer(folder, lb.url)
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from typing import Any

from support.http_servers import free_port


class Balancer:
    def __init__(self, targets: list[int]) -> None:
        self.targets = list(targets)
        self.port = free_port()
        self.connections: dict[int, int] = dict.fromkeys(self.targets, 0)  # per target: connections made
        self._turn = itertools.cycle(range(len(self.targets)))
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._target_of: dict[socket.socket, int] = {}  # each open upstream socket: the replica it reaches
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(256)
        threading.Thread(target=self._accept, daemon=True, name="balancer").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Balancer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open_to(self, target: int) -> int:
        """How many connections are open to that replica now."""
        with self._lock:
            return sum(1 for sock, port in self._target_of.items() if port == target and sock in self._open)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            _close(conn)

    def _upstream(self) -> tuple[socket.socket, int] | None:
        for _ in range(len(self.targets)):
            with self._lock:
                target = self.targets[next(self._turn)]
            try:
                upstream = socket.create_connection(("127.0.0.1", target), timeout=2)
            except OSError:
                continue  # down: the next replica
            upstream.settimeout(None)
            with self._lock:
                self.connections[target] += 1
            return upstream, target
        return None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            picked = self._upstream()
            if picked is None:
                _close(client)  # every replica is down: the client sees the connection closed
                continue
            upstream, target = picked
            with self._lock:
                self._open |= {client, upstream}
                self._target_of[upstream] = target
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

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
                self._open -= {src, dst}
                self._target_of.pop(src, None)
                self._target_of.pop(dst, None)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
