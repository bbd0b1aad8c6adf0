"""How S3 failures are judged: tried again inside the upload, and retryable for the job, or not."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from worker_app_fastwan.job.s3_storage import _permanent, _transient, describe


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Put")


@pytest.mark.parametrize(
    ("exc", "again_now", "final", "shown"),
    [
        (client_error("SlowDown", 503), True, False, "SlowDown (HTTP 503)"),
        (client_error("InternalError", 500), True, False, "InternalError (HTTP 500)"),
        (client_error("AccessDenied", 403), False, False, "AccessDenied (HTTP 403)"),
        (client_error("NoSuchBucket", 404), False, False, "NoSuchBucket (HTTP 404)"),
        (client_error("BadDigest", 400), False, False, "BadDigest (HTTP 400)"),
        (client_error("EntityTooLarge", 400), False, True, "EntityTooLarge (HTTP 400)"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True, False, "EndpointConnectionError"),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), True, False, "ReadTimeoutError"),
    ],
)
def test_each_failure_is_judged(exc: Exception, again_now: bool, final: bool, shown: str) -> None:
    assert _transient(exc) is again_now
    assert _permanent(exc) is final
    assert describe(exc) == shown
