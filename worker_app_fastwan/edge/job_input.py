"""Validating a job input at the edge: one rule for queue mode, buffer mode, the CLI and the stub.

A bad input becomes `JobFailure(invalid_input)` with one line naming every bad field.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode, JobInput
from worker_app_fastwan.edge.body_guard import BodyRejected, check_json_value


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming every bad field, e.g. ``width: must be a multiple of 32 (got 500)``."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {msg}")
    return "; ".join(parts)


def parse_job_input(data: Any) -> JobInput:
    """Validate a job input; raises ``JobFailure(invalid_input)`` naming the fields."""
    if not isinstance(data, dict):
        raise JobFailure(ErrorCode.invalid_input, "body: the job input must be a JSON object")
    try:
        check_json_value(data)
    except BodyRejected as exc:
        raise JobFailure(ErrorCode.invalid_input, exc.message) from None
    try:
        return JobInput.model_validate(data)
    except ValidationError as exc:
        raise JobFailure(ErrorCode.invalid_input, describe_validation_error(exc)) from None
