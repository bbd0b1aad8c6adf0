"""`python -m worker_app_fastwan check-settings`: check every setting, print one line per problem, exit 2 if any.

The container's entrypoint runs it before anything starts, so the rules live once, in `settings.py`; then the
folders the worker writes must be writable (`folders.py`): a read-only or foreign-owned mount stops the
container here, in one line, instead of failing the first job.
"""

from __future__ import annotations

import sys

from worker_app_fastwan.exit_codes import ExitCode
from worker_app_fastwan.settings import Settings, settings_problems


def check_settings(mode: str | None = None) -> int:
    """The settings' own rules first; when they hold, the folders the worker will write (folders.py)."""
    problems = settings_problems(mode)
    if not problems:
        from worker_app_fastwan.folders import folder_problems

        problems = folder_problems(Settings())
    for line in problems:
        print(f"fastwan-worker: {line}", file=sys.stderr)
    return ExitCode.BAD_INPUT if problems else ExitCode.OK
