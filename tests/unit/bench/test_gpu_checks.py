"""bench/gpu_checks.py, the one call a lent GPU gets: its job driver and its time budget, without processes.
(The whole script ran end to end on the CPU at the tiny scale; BENCHMARKS.md says how.)"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from support import REPO


def load_checks():
    spec = importlib.util.spec_from_file_location("gpu_checks", REPO / "bench" / "gpu_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeStub:
    """The stub's /v1 API for one job: denoising steps 0, 1, 2, then decoding; cancelled if asked in time."""

    def __init__(self) -> None:
        self.polls = 0
        self.cancels: list[tuple[str, int]] = []

    def post(self, path: str, json: Any = None) -> Any:
        if path.endswith("/cancel"):
            self.cancels.append((path, self.polls))
        return _Answer({"job_id": "j-1"})

    def get(self, path: str) -> Any:
        self.polls += 1
        if self.cancels and self.polls > self.cancels[0][1] + 1:
            return _Answer({"status": "failed", "error": {"code": "cancelled"}, "result": None})
        if self.polls <= 3:
            return _Answer({"status": "running", "stage": "denoising", "step": self.polls - 1})
        if self.polls <= 5:
            return _Answer({"status": "running", "stage": "decoding", "step": None})
        result = {"timings": {"total_s": 1.0}, "bytes": 10}
        return _Answer({"status": "completed", "stage": "completed", "result": result})


class _Answer:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def json(self) -> dict[str, Any]:
        return self.body


class NoVram:
    def reset_peak(self) -> None:
        pass

    def peak_mib(self) -> None:
        return None

    def now_mib(self) -> None:
        return None


def test_a_job_is_cancelled_once_mid_denoise_and_a_good_one_completes(monkeypatch) -> None:
    checks = load_checks()
    monkeypatch.setattr(checks, "SETTLE_S", 0)
    monkeypatch.setattr(checks.time, "sleep", lambda _s: None)
    stub = FakeStub()
    cancelled = checks._job(stub, NoVram(), {"prompt": "x"}, cancel_at_step=1)
    assert stub.cancels == [("/v1/jobs/j-1/cancel", 2)], "once, at the first poll that shows step 1"
    assert cancelled["status"] == "failed" and cancelled["error"] == {"code": "cancelled"}
    assert cancelled["cancel_sent_at"] == {"stage": "denoising", "step": 1}
    good = checks._job(FakeStub(), NoVram(), {"prompt": "x"})
    assert good["status"] == "completed" and good["timings"] == {"total_s": 1.0} and good["cancel_sent_at"] is None


def test_a_stage_past_the_budget_is_skipped_and_every_stage_rewrites_the_json(tmp_path: Path) -> None:
    checks = load_checks()
    args = argparse.Namespace(
        out=str(tmp_path / "out"), work=str(tmp_path / "work"), budget_s=100.0, scale="full", device="cuda", only=None
    )
    run = checks.Run(args)
    run.stage("quick", lambda: {"figure": 1}, estimate_s=50)
    run.stage("too long", lambda: {"figure": 2}, estimate_s=500)
    run.stage("broken", lambda: 1 / 0, estimate_s=10)
    report = json.loads((tmp_path / "out" / "gpu_checks.json").read_text())
    assert report["stages"]["quick"]["figure"] == 1
    assert "skipped" in report["stages"]["too long"]
    assert report["stages"]["broken"]["error"].startswith("ZeroDivisionError")
