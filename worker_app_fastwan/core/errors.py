"""The exceptions the worker reports: `JobFailure` (a job's, with a protocol error code) and `ModelUnavailable`."""

from __future__ import annotations

import re

from worker_app_fastwan.core.schema import ErrorCode, JobError

# Whether another attempt (here or on another worker) can succeed, by code, unless a raiser knows better.
DEFAULT_RETRYABLE: dict[ErrorCode, bool] = {
    ErrorCode.invalid_input: False,
    ErrorCode.image_download_failed: True,
    ErrorCode.out_of_memory: True,
    ErrorCode.generation_failed: True,
    ErrorCode.upload_failed: True,
    ErrorCode.timeout: True,
    ErrorCode.cancelled: False,
    ErrorCode.internal: True,
}


# An absolute path on this machine: a slash not inside a URL or a word, then folders. Only its last part is kept.
_LOCAL_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"()<>,;]+/)+([^\s/'\"()<>,;]*)")


def hide_local_paths(text: str) -> str:
    """`text` with every absolute local path cut to `…/<last part>`: clients need not learn this machine's layout."""
    return _LOCAL_PATH.sub(lambda m: "…/" + m.group(1), text)


class JobFailure(Exception):
    """A job failed with a protocol error; ``message`` is shown to clients, so it never holds secrets or
    local paths (exception texts often name files: they are cut by `hide_local_paths`)."""

    def __init__(self, code: ErrorCode | str, message: str, retryable: bool | None = None) -> None:
        self.code = ErrorCode(code)
        self.message = hide_local_paths(message)
        self.retryable = DEFAULT_RETRYABLE[self.code] if retryable is None else retryable
        super().__init__(f"{self.code.value}: {self.message}")

    def to_error(self) -> JobError:
        return JobError(code=self.code, message=self.message, retryable=self.retryable)


class ModelUnavailable(RuntimeError):
    """The model cannot be had here (no weights, or no device to run them on); str() is one line naming the
    model and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
