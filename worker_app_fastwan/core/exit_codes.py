"""The process exit codes of every command, stated once (the README's table lists them)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    # A generation failed, or a long-running mode stopped because its GPU process became unhealthy.
    FAILED = 1
    # A bad setting or a bad input: fix the value and run again.
    BAD_INPUT = 2
    # The model cannot be loaded (weights missing, unreadable, or no device to run them on).
    MODEL_UNAVAILABLE = 3
    # Stopped by Ctrl-C (SIGINT), the shell's convention: 128 + the signal number.
    INTERRUPTED = 130
