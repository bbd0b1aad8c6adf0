"""Structured logs: one JSON line per event, with the current job id on every line of a job.

The job id travels in a context variable, so code deep in a job's path logs it without passing it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or _job_id.get()
        if job_id:
            line["job_id"] = job_id
        line.update({k: v for k, v in vars(record).items() if k not in _RESERVED and k != "job_id"})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str = "INFO", process: str = "worker") -> None:
    """Send every logger's records to stderr as JSON lines; call once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "b2sdk", "urllib3", "uvicorn.access", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger().name = process


@contextlib.contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Every log line inside carries `job_id`."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)
