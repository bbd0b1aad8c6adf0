"""Property-based fuzzing of every stub route over real HTTP on loopback (support/fuzz.py): no input may
produce a server error. The worker's queue-mode `/generate` is fuzzed in test_queue_mode.py, on that
module's worker."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.stubs import StubProcess

STUB_ROUTES = {
    ("POST", "/internal/buffer/jobs/claim"),
    ("POST", "/internal/buffer/workers/{worker_id}/heartbeat"),
    ("POST", "/internal/buffer/jobs/{job_id}/status"),
    ("POST", "/internal/videogen/jobs/{job_id}/progress"),
    ("GET", "/health"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("GET", "/v1/queue"),
}


@pytest.fixture(scope="module")
def fuzz_stub(module_stubs: Callable[..., StubProcess]) -> StubProcess:
    # Private webhook targets refused, as in production: a fuzzed notify_url must never reach this box. A fuzzed
    # claim that asks to wait (`wait_s`) waits a tenth of a second, not the default 30 s.
    return module_stubs(WEBHOOK_ALLOW_PRIVATE="false", CLAIM_WAIT_MAX_S=0.1)


def test_no_stub_route_answers_a_server_error(fuzz_stub: StubProcess) -> None:
    # Imported here: Hypothesis and schemathesis take seconds to import, paid only by the worker running this.
    from support.fuzz import fuzz, no_server_error

    outcome = fuzz(f"{fuzz_stub.url}/openapi.json", no_server_error)
    assert STUB_ROUTES <= outcome["seen"], f"not in the OpenAPI document: {STUB_ROUTES - outcome['seen']}"
    assert outcome["streams"] == {("GET", "/v1/events"), ("GET", "/v1/jobs/{job_id}/events")}, "only streams unfuzzed"
    assert not outcome["problems"], "\n".join(outcome["problems"][:10])
    codes = outcome["codes"]
    # Not vacuous: valid cases got through to real work, and invalid ones were refused.
    submissions = codes[("POST", "/v1/jobs")]
    assert sum(submissions.values()) > 0 and set(submissions) <= {200, 201, 400, 413, 422}, submissions
    assert codes[("POST", "/internal/buffer/workers/{worker_id}/heartbeat")][200] > 0
    assert codes[("GET", "/v1/jobs")][422] > 0 and codes[("POST", "/internal/buffer/jobs/claim")][422] > 0
    assert fuzz_stub.get("/v1/jobs", limit="500").status_code == 200, "every job a fuzz case made still reads"
