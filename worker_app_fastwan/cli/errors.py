"""How a command ends: an `ExitCode`, and on failure one line on stderr saying what failed and what to do.

Every command (`generate`, `download-model`, `doctor`, …) runs inside `run_command`. It returns an exit
code, or raises `CommandError` (or lets one of the known exceptions in `classify` through), which becomes
that one line: text on a terminal, a JSON record otherwise (`LOG_FORMAT`). The traceback is shown only
with `LOG_LEVEL=DEBUG`; an unexpected exception says so and how to see it.

`check-settings` is the one command that reports every problem rather than the first (`check_settings`): the
container's entrypoint runs it before anything starts, so the rules live once, in `core/settings.py`.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import TextIO

from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.core.logs import resolve_format

PROGRAM = "fastwan-worker"


class CommandError(Exception):
    """A command's failure: the exit code, one line saying what failed and why, and what to do about it."""

    def __init__(self, code: ExitCode, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = ExitCode(code)
        self.message = " ".join(message.split())
        self.hint = " ".join(hint.split())


def classify(exc: BaseException) -> CommandError:
    """The exit code and line for an exception a command let through."""
    from worker_app_fastwan.core.errors import JobFailure, ModelUnavailable
    from worker_app_fastwan.core.schema import ErrorCode
    from worker_app_fastwan.core.settings import SettingsError

    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, SettingsError):
        return CommandError(ExitCode.BAD_INPUT, str(exc))
    if isinstance(exc, ModelUnavailable):
        return CommandError(ExitCode.MODEL_UNAVAILABLE, str(exc))
    if isinstance(exc, JobFailure):
        bad_input = exc.code is ErrorCode.invalid_input
        return CommandError(ExitCode.BAD_INPUT if bad_input else ExitCode.FAILED, f"{exc.code.value}: {exc.message}")
    if isinstance(exc, KeyboardInterrupt):
        return CommandError(ExitCode.INTERRUPTED, "interrupted")
    return CommandError(
        ExitCode.FAILED,
        f"internal error: {type(exc).__name__}: {exc}",
        "run again with LOG_LEVEL=DEBUG to see the traceback, and report it",
    )


def error_line(error: CommandError, fmt: str) -> str:
    """The one line: `fastwan-worker: error: … (hint: …)`, or a JSON record with the same fields."""
    if resolve_format(fmt) == "json":
        record: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "level": "error",
            "logger": PROGRAM,
            "event": error.message,
            "exit_code": int(error.code),
        }
        if error.hint:
            record["hint"] = error.hint
        return json.dumps(record)
    return f"{PROGRAM}: error: {error.message}" + (f" (hint: {error.hint})" if error.hint else "")


def report(
    error: CommandError, *, fmt: str = "auto", debug: bool = False, exc: BaseException | None = None, stream=None
) -> ExitCode:
    """Print the error's line (after the traceback when `debug`) and return its exit code."""
    out: TextIO = stream if stream is not None else sys.stderr
    if debug and exc is not None:
        out.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    out.write(error_line(error, fmt) + "\n")
    out.flush()
    return error.code


def run_command(command: Callable[[], int], *, fmt: str = "auto", debug: bool = False) -> int:
    """Run one command to its exit code; every exception becomes one line and a documented code."""
    try:
        return int(command())
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place a command's failure becomes its exit status
        return int(report(classify(exc), fmt=fmt, debug=debug, exc=exc))


def check_settings(mode: str | None = None) -> int:
    """`check-settings`: every setting checked, one line per problem on stderr, exit 2 if any; when the
    settings hold, the folders the worker writes must be writable (`core/folders.py`): a read-only or
    foreign-owned mount stops the container here, in one line, instead of failing the first job."""
    from worker_app_fastwan.core.folders import folder_problems
    from worker_app_fastwan.core.settings import Settings, settings_problems

    problems = settings_problems(mode)
    if not problems:
        problems = folder_problems(Settings())
    for line in problems:
        print(f"{PROGRAM}: {line}", file=sys.stderr)
    return ExitCode.BAD_INPUT if problems else ExitCode.OK
