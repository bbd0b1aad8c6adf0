"""Logs by audience: JSON lines for machines, short text lines for a person at a terminal.

`LOG_FORMAT=auto` (the default) picks text when stderr is a terminal and JSON lines otherwise (containers,
CI, pipes). Both carry the current job id on every line of a job: it travels in a context variable, so
code deep in a job's path logs it without passing it. Values are shown as the code logs them; secrets are
masked before they get here (`Settings.summary()`, `SecretStr`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Literal, TextIO

LogFormat = Literal["auto", "json", "text"]

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
# The buffer worker's slot (one per GPU): set around a slot's tasks, so every line of theirs names it.
_slot: contextvars.ContextVar[int | None] = contextvars.ContextVar("slot", default=None)

# uvicorn adds `color_message`, its message again with ANSI colours: never a field of ours.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
# Loggers that chatter at INFO about their own plumbing; their warnings still show.
_NOISY = ("httpx", "httpcore", "b2sdk", "urllib3", "uvicorn.access", "diffusers", "transformers", "huggingface_hub")
# Third-party notices that never concern a user of this worker, matched exactly (logger prefix, message start).
# transformers warns when diffusers' Wan image-to-video module imports `CLIPImageProcessor` without torchvision;
# the worker passes `image_processor=None` (the image is conditioned through the VAE), so it never uses one.
KNOWN_NOISE = (("transformers", "`CLIPImageProcessor` requires torchvision (not installed)"),)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The record's extras, job id first."""
    fields: dict[str, object] = {}
    job_id = getattr(record, "job_id", None) or _job_id.get()
    if job_id:
        fields["job_id"] = job_id
    slot = _slot.get()
    if slot is not None:
        fields["slot"] = slot
    fields.update({k: v for k, v in vars(record).items() if k not in _RESERVED and k != "job_id"})
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """`07:31:02 WARNING runner: job failed  job_id=… code=timeout`; a traceback only when `tracebacks`."""

    def __init__(self, tracebacks: bool = False) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        name = record.name.removeprefix("worker_app_fastwan.")
        extras = "  ".join(f"{k}={_short(v)}" for k, v in _fields(record).items())
        message = _printable(record.getMessage())
        line = f"{stamp} {record.levelname:<7} {name}: {message}" + (f"  {extras}" if extras else "")
        if record.exc_info and record.exc_info[1] is not None:
            if self.tracebacks:
                return line + "\n" + self.formatException(record.exc_info)
            exc = record.exc_info[1]
            line += f"  ({type(exc).__name__}: {_printable(' '.join(str(exc).split())[:300])})"
        return line


def _short(value: object) -> str:
    """A field's value on one line: as it is when that is unambiguous, else quoted and escaped as JSON.

    Values may come from requests (a path, a worker's id): a newline or a terminal escape code in one would
    otherwise forge a log line or rewrite the terminal. JSON lines escape them by construction; so does this.
    """
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if text and text.isprintable() and " " not in text and '"' not in text else json.dumps(text)


def _printable(text: str) -> str:
    """`text` with every control or other unprintable character escaped (`\\n`, `\\x1b`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class KnownNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        return not any(record.name.startswith(prefix) and message.startswith(text) for prefix, text in KNOWN_NOISE)


class _HideOwnRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL or not record.name.startswith("worker_app_fastwan")


def hide_own_records() -> None:
    """On a terminal, `generate` and `download-model` show progress and one error line instead of the
    worker's own records (they say the same things); third-party warnings still show."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_HideOwnRecords())


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time, so a live progress display that redirects it can
    print log lines above itself instead of being torn by them."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def resolve_format(fmt: str, stream: TextIO | None = None) -> Literal["json", "text"]:
    """`auto` is text on a terminal, JSON lines anywhere else."""
    if fmt in ("json", "text"):
        return fmt  # type: ignore[return-value]
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return "json"


def make_formatter(fmt: str, level: str = "INFO") -> logging.Formatter:
    if resolve_format(fmt) == "text":
        return TextFormatter(tracebacks=level == "DEBUG")
    return JsonFormatter()


def setup_logging(level: str = "INFO", process: str = "worker", fmt: LogFormat | str = "auto") -> str:
    """Send every logger's records to stderr in `fmt` (auto, json, text); call once per process.

    Returns the format in use (`json` or `text`). Python warnings become log records too, so they share
    the format and the level instead of printing their own multi-line blocks.
    """
    handler = _StderrHandler()
    handler.setFormatter(make_formatter(fmt, level))
    handler.addFilter(KnownNoiseFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger().name = process
    logging.captureWarnings(True)
    return resolve_format(fmt)


def adopt_library_loggers() -> None:
    """transformers and diffusers print through handlers of their own; route them through ours instead.

    Imports both libraries, so only the GPU child calls this (`pipelines.make_backend`, before their import).
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (transformers_logging, diffusers_logging):
        lib.disable_default_handler()
        lib.enable_propagation()
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.WARNING)


def current_slot() -> int | None:
    return _slot.get()


@contextlib.contextmanager
def slot_context(slot: int | None) -> Iterator[None]:
    """Every log line inside (and of every task created inside) carries `slot`."""
    token = _slot.set(slot)
    try:
        yield
    finally:
        _slot.reset(token)


@contextlib.contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Every log line inside carries `job_id`."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)
