"""The training run's record: progress lines, CPU time, and what made the weights (commit, versions)."""

from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Log:
    """Progress lines on stdout and the loss curve kept for the record."""

    out: Callable[[str], None] = print
    started: float = field(default_factory=time.monotonic)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def __call__(self, message: str) -> None:
        self.out(f"[{time.monotonic() - self.started:7.1f}s] {message}")

    def loss(self, stage: str, step: int, total: int, value: float, every: int) -> None:
        self.curves.setdefault(stage, []).append((step, value))
        if step % every == 0 or step == total - 1:
            self(f"{stage} step {step + 1}/{total} loss {value:.4f}")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its threads (not wall time: the machine may be shared)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def commit_of_script(script: Path) -> str:
    """The commit `script` was last changed in (and whether the checkout differs from it)."""
    here = script.resolve()
    try:
        commit = subprocess.run(
            ["git", "log", "-1", "--format=%H", "--", here.name],
            cwd=here.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", here.name],
            cwd=here.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "uncommitted") + ("+modified" if dirty else "")


def versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
