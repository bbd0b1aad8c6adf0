"""`python tests/support/delayed_upload_worker.py buffer`: the real worker CLI, with every upload delayed.

Tests and `make bench` only (never a production setting): B2 from a rented box takes 1-2 s per video, while
local storage on loopback takes milliseconds, so the time a job spends uploading is made real here. The
delay comes from UPLOAD_DELAY_S in this process's environment, which the worker's own settings ignore.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


class DelayedStorage:
    """Sleeps `delay_s` in the upload thread, then uploads with the real storage."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def upload(self, local_path: Path, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay_s)
        return self.inner.upload(local_path, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def main() -> int:
    from worker_app_fastwan.job import storage

    real = storage.make_storage
    delay_s = float(os.environ.get("UPLOAD_DELAY_S", "1"))
    # Before the CLI imports the modes, so that `from storage import make_storage` gets this one.
    storage.make_storage = lambda settings: DelayedStorage(real(settings), delay_s)  # type: ignore[assignment]
    from worker_app_fastwan.cli.main import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":  # the GPU child (spawned) imports this file too: only the parent runs the CLI
    sys.exit(main())
