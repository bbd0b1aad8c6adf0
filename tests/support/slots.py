"""Helpers for slots and pipelining tests (and `make bench`): a worker whose uploads take time, and a proxy
that can hold back or refuse the answers to final statuses.

    worker = workers.add(DelayedUploadWorker.buffer(tmp_path / "w", proxy.url, UPLOAD_DELAY_S=2))
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.procs import RecordingProxy, Seen, WorkerProcess
from support.stubs import REPO

DELAYED_WORKER = Path(__file__).with_name("delayed_upload_worker.py")
FINAL = ("completed", "failed")


@dataclass
class DelayedUploadWorker(WorkerProcess):
    """A worker process whose every upload sleeps UPLOAD_DELAY_S (default 1 s) first: B2 from a rented box."""

    def start(self) -> DelayedUploadWorker:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(DELAYED_WORKER), self.command],
                env=env,
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self


class StatusProxy(RecordingProxy):
    """A recording proxy that delays the answer to each final status by `final_delay_s` (the orchestrator
    writing it away), and answers 503 to every final status while `refuse_finals` is set."""

    def __init__(self, target: str, final_delay_s: float = 0.0) -> None:
        self.final_delay_s = final_delay_s
        self.refuse_finals = False
        super().__init__(target)

    def _forward(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, str]:
        if path.endswith("/status") and raw and json.loads(raw).get("status") in FINAL:
            if self.refuse_finals:
                return 503, b'{"detail": "unavailable"}', "application/json"
            status = super()._forward(method, path, headers, raw)
            time.sleep(self.final_delay_s)  # after the stub stored it: only the answer is late
            return status
        return super()._forward(method, path, headers, raw)

    def finals(self, job_id: str | None = None, delivered: bool = True) -> list[Seen]:
        """Final statuses posted (for one job), only those answered 200 when `delivered`."""
        return [
            s
            for s in self.requests(f"/jobs/{job_id}/status" if job_id else "/status")
            if s.body["status"] in FINAL and (s.status == 200 or not delivered)
        ]

    def claims(self) -> list[Seen]:
        """Claims that handed out a job."""
        return [s for s in self.requests("/jobs/claim") if s.status == 200]

    def beats(self, worker_id: str | None = None) -> list[dict[str, Any]]:
        # A beat replaced by the next one before its body was sent (a loaded machine) arrives empty: not a beat.
        seen = self.requests(f"/workers/{worker_id}/heartbeat" if worker_id else "/heartbeat")
        return [s.body for s in seen if s.body is not None]
