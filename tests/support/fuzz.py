"""Property-based fuzzing of a live HTTP service from its own OpenAPI document (schemathesis, on Hypothesis).

`fuzz()` runs every operation the document lists, with valid cases ("positive") and cases that break the
schema on purpose ("negative"), over real HTTP. It is bounded (a fixed number of examples per operation and
mode, no example database, no shrinking of passing runs) so the suite stays fast; `FUZZ_EXAMPLES=200` makes
a long hunt. Each problem comes back with the operation and a curl command that reproduces it.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from support.stubs import API_KEY

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))  # per operation and mode; raise it for a long hunt
Check = Callable[[Any, Any], str | None]  # (case, response) -> what is wrong, or None


def fuzz(openapi_url: str, check: Check, prepare: Callable[[Any], Any] = lambda case: case) -> dict[str, Any]:
    """Run every operation of the document in both modes; returns the operations seen, codes and problems.

    Event streams (`text/event-stream`) are listed in `streams` and not fuzzed: a valid case opens a stream that
    never ends, which the HTTP client here would read forever (tests/process/test_stub_events.py refuses their
    bad inputs by hand)."""
    schema = schemathesis.openapi.from_url(openapi_url)
    seen: set[tuple[str, str]] = set()
    streams: set[tuple[str, str]] = set()
    codes: dict[tuple[str, str], collections.Counter[int]] = collections.defaultdict(collections.Counter)
    problems: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        key = (operation.method.upper(), operation.path)
        seen.add(key)
        success = operation.definition.raw.get("responses", {}).get("200", {})
        if "text/event-stream" in success.get("content", {}):
            streams.add(key)
            continue
        inputs = any((operation.body, operation.path_parameters, operation.query, operation.headers))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if inputs else (GenerationMode.POSITIVE,):
            strategy = operation.as_strategy(generation_mode=mode).map(prepare)
            try:
                _property(strategy, check, codes[key], problems, f"{key[0]} {key[1]} ({mode.value})")()
            except Unsatisfiable:  # nothing in the schema can be broken (e.g. a body of any JSON)
                pass
    return {"seen": seen, "streams": streams, "codes": codes, "problems": problems}


def _property(
    strategy: Any, check: Check, codes: collections.Counter[int], problems: list[str], name: str
) -> Callable[[], None]:
    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Any) -> None:
        try:
            response = case.call(headers={"X-Internal-Api-Key": API_KEY}, timeout=30)
        except ValueError:  # a header value `requests` will not send (not the server's to answer)
            hypothesis.reject()
        codes[response.status_code] += 1
        wrong = check(case, response)
        if wrong:
            problems.append(f"{name}: {wrong}\n    {case.as_curl_command()}")

    return one


def no_server_error(case: Any, response: Any) -> str | None:
    if response.status_code >= 500:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    return None


# ---- the worker's queue-mode /generate ----------------------------------------------------------------------

# The 5xx the protocol allows for an input: the image host failed, or (v1.2) the output target refused the upload.
RETRY_LATER = {"image_download_failed", "upload_failed"}


def generate_check(case: Any, response: Any) -> str | None:
    """No 5xx, except a 503 with a retryable `image_download_failed` or `upload_failed` (another host's fault)."""
    if response.status_code < 500:
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} without a protocol error: {response.text[:300]}"
    if response.status_code == 503 and error.get("code") in RETRY_LATER and error.get("retryable") is True:
        return None
    return f"HTTP {response.status_code}: {error}"


def cheap(case: Any) -> Any:
    """Valid sizes become the smallest valid ones, absent ones too: the fuzz is about input handling, not
    about generating 1280x704x121 videos on a CPU. Invalid values are left as they are."""
    body = case.body
    if isinstance(body, dict):
        for field in ("width", "height"):
            value = body.get(field, 128)
            if type(value) is int and 128 <= value <= 1280 and value % 32 == 0:
                body[field] = 128
        frames = body.get("num_frames", 5)
        if type(frames) is int and 5 <= frames <= 241 and (frames - 1) % 4 == 0:
            body["num_frames"] = 5
    return case
