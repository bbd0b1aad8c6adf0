"""core/logs.py and cli/errors.py in one process: the format by audience, the known-noise filter, one-line errors."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from worker_app_fastwan.cli.errors import CommandError, classify, run_command
from worker_app_fastwan.core.errors import JobFailure, ModelUnavailable
from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.core.logs import JsonFormatter, KnownNoiseFilter, TextFormatter, job_context, resolve_format
from worker_app_fastwan.core.settings import SettingsError, load_settings

TORCHVISION_NOTICE = (
    "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` for "
    "backward compatibility. Install torchvision to use the default backend, or import `CLIPImageProcessorPil` "
    "directly to silence this warning."
)


def _record(name: str, msg: str, level: int = logging.WARNING, exc: BaseException | None = None, **extra):
    record = logging.LogRecord(
        name, level, __file__, 1, msg, None, (type(exc), exc, exc.__traceback__) if exc else None
    )
    record.__dict__.update(extra)
    return record


def test_auto_is_text_on_a_terminal_and_json_elsewhere():
    main, secondary = os.openpty()
    with os.fdopen(secondary, "w") as terminal:
        assert resolve_format("auto", terminal) == "text"
        assert resolve_format("json", terminal) == "json"
    os.close(main)
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"


def test_text_line_carries_the_job_id_and_extras_and_no_traceback():
    try:
        raise ValueError("bad\nframe")
    except ValueError as exc:
        record = _record("worker_app_fastwan.job.runner", "job failed", exc=exc, code="timeout", detail="two words")
    with job_context("job-7"):
        line = TextFormatter().format(record)
    assert "\n" not in line and "Traceback" not in line
    assert line.endswith('runner: job failed  job_id=job-7  code=timeout  detail="two words"  (ValueError: bad frame)')
    assert "Traceback" in TextFormatter(tracebacks=True).format(record)


def test_secrets_are_masked_in_both_formats():
    settings = load_settings(env_file=None, ORCHESTRATOR_BASE_URL="http://o", INTERNAL_API_KEY="s3cret-key")
    record = _record("worker_app_fastwan", "settings", logging.INFO, **settings.summary())
    text, as_json = TextFormatter().format(record), JsonFormatter().format(record)
    assert "s3cret-key" not in text + as_json
    assert "INTERNAL_API_KEY=***" in text and json.loads(as_json)["INTERNAL_API_KEY"] == "***"


def test_known_noise_filter_drops_exactly_the_torchvision_notice():
    noise = KnownNoiseFilter()
    assert not noise.filter(_record("transformers.utils.import_utils", TORCHVISION_NOTICE))
    assert noise.filter(_record("transformers.utils.import_utils", "`SiglipImageProcessor` is deprecated"))
    assert noise.filter(_record("worker_app_fastwan.job.runner", TORCHVISION_NOTICE))  # only from its source
    assert noise.filter(_record("transformers.modeling_utils", "Some weights were not initialized"))


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (SettingsError("invalid setting PORT: too big"), ExitCode.BAD_INPUT, "invalid setting PORT: too big"),
        (JobFailure("invalid_input", "width: must be a multiple of 32"), ExitCode.BAD_INPUT, "invalid_input: width"),
        (JobFailure("out_of_memory", "the GPU ran out of memory"), ExitCode.FAILED, "out_of_memory: the GPU"),
        (JobFailure("timeout", "the job exceeded"), ExitCode.FAILED, "timeout: the job exceeded"),
        (ModelUnavailable("model x is not in the cache; set MODEL_PATH"), ExitCode.MODEL_UNAVAILABLE, "model x is"),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted"),
        (RuntimeError("boom"), ExitCode.FAILED, "internal error: RuntimeError: boom"),
    ],
)
def test_each_failure_becomes_its_exit_code_and_one_line(exc, code, line, capsys):
    def command() -> int:
        raise exc

    assert run_command(command, fmt="text") == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fastwan-worker: error: {line}")
    assert classify(exc).code == code


def test_an_unexpected_error_says_how_to_see_the_traceback(capsys):
    def command() -> int:
        raise RuntimeError("boom")

    run_command(command, fmt="json")
    record = json.loads(capsys.readouterr().err)
    assert record["exit_code"] == 1 and "LOG_LEVEL=DEBUG" in record["hint"]
    run_command(command, fmt="text", debug=True)
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_command_error_keeps_its_code_and_hint(capsys):
    def command() -> int:
        raise CommandError(ExitCode.MODEL_UNAVAILABLE, "no GPU\nfound", "use PIPELINE_BACKEND=tiny")

    assert run_command(command, fmt="text") == 3
    assert capsys.readouterr().err == "fastwan-worker: error: no GPU found (hint: use PIPELINE_BACKEND=tiny)\n"


def test_text_logs_escape_control_characters_from_requests() -> None:
    """A request path or a worker's id may carry a newline or a terminal escape: in a text log line it must not
    start a forged line or rewrite the terminal. JSON lines escape them by construction; text lines too."""
    import logging

    from worker_app_fastwan.core.logs import TextFormatter

    spaced = "/v1/jobs\n12:00:00 ERROR   orchestrator_stub: all jobs deleted\x1b[2J"
    unspaced = "/v1/jobs\n12:00:00\tERROR\tforged\x1b[2J"
    fields = {"path": spaced, "worker_id": unspaced, "q": 'a"b'}
    record = logging.makeLogRecord(
        {"msg": "refused %s", "args": ("\r\x07",), "levelname": "WARNING", "name": "x"} | fields
    )
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x07" not in line and "\t" not in line
    assert '"/v1/jobs\\n12:00:00 ERROR' in line and "\\u001b[2J" in line
    assert 'worker_id="/v1/jobs\\n12:00:00\\tERROR\\tforged\\u001b[2J"' in line
    assert 'q="a\\"b"' in line, "a quote in a value cannot end it early"
