"""What a doctor check found, one line each, and the exit status of the whole run."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from worker_app_fastwan.core.exit_codes import ExitCode


class Status(str, Enum):
    ok = "✓"
    fail = "✗"  # needed for the configured mode: the box cannot serve
    warn = "!"  # wrong, but not needed for the configured mode
    skip = "–"  # not applicable here, or not asked for


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def line(self, secrets: tuple[str, ...] = ()) -> str:
        text = f"{self.status.value} {self.name}: {' '.join(self.detail.split())}"
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.ok, detail)


def fail(name: str, detail: str) -> Check:
    return Check(name, Status.fail, detail)


def warn(name: str, detail: str) -> Check:
    return Check(name, Status.warn, detail)


def skip(name: str, detail: str) -> Check:
    return Check(name, Status.skip, detail)


def exit_code(checks: list[Check]) -> ExitCode:
    """0 only when nothing needed for the configured mode failed."""
    return ExitCode.FAILED if any(c.status is Status.fail for c in checks) else ExitCode.OK


def summary(checks: list[Check]) -> str:
    failed = [c.name for c in checks if c.status is Status.fail]
    if failed:
        return f"✗ this box cannot serve as configured: {', '.join(failed)} failed"
    return "✓ this box can serve as configured"
