"""The one exception type a job fails with, carrying a protocol error code."""

from __future__ import annotations

from worker_app_fastwan.schema import ErrorCode, JobError

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


class JobFailure(Exception):
    """A job failed with a protocol error; ``message`` is shown to clients, so it never holds secrets."""

    def __init__(self, code: ErrorCode | str, message: str, retryable: bool | None = None) -> None:
        self.code = ErrorCode(code)
        self.message = message
        self.retryable = DEFAULT_RETRYABLE[self.code] if retryable is None else retryable
        super().__init__(f"{self.code.value}: {message}")

    def to_error(self) -> JobError:
        return JobError(code=self.code, message=self.message, retryable=self.retryable)
