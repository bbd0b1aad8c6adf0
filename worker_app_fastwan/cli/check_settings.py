"""`python -m worker_app_fastwan check-settings`: check every setting, print one line per problem, exit 2 if any.

The container's entrypoint runs it before anything starts, so the rules live once, in `core/settings.py`.
"""

from __future__ import annotations

import sys

from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.core.settings import settings_problems


def check_settings(mode: str | None = None) -> int:
    problems = settings_problems(mode)
    for line in problems:
        print(f"fastwan-worker: {line}", file=sys.stderr)
    return ExitCode.BAD_INPUT if problems else ExitCode.OK
