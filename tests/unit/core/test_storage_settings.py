"""The storage variables: which backend they select, and the combinations refused at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker_app_fastwan.core.protocol import OutputTarget
from worker_app_fastwan.core.settings import SettingsError, load_settings

B2 = {"B2_KEY_ID": "kid", "B2_APP_KEY": "b2-secret-4411", "B2_BUCKET_NAME": "b"}
S3 = {"S3_BUCKET": "videos", "AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s3-secret-9921"}


@pytest.mark.parametrize(
    ("env", "storage"),
    [
        ({}, "local"),
        (B2, "b2"),
        (S3, "s3"),
        ({**S3, "STORAGE_BACKEND": "local"}, "local"),
        ({"STORAGE_BACKEND": "presigned"}, "presigned"),
        ({**B2, **S3, "STORAGE_BACKEND": "s3"}, "s3"),
    ],
)
def test_auto_and_explicit_backends(env: dict[str, str], storage: str) -> None:
    assert load_settings(None, **env).storage == storage


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({**B2, **S3}, "STORAGE_BACKEND: both B2_KEY_ID and S3_BUCKET"),
        ({"STORAGE_BACKEND": "s3"}, "S3_BUCKET: is required"),
        ({"S3_BUCKET": "v", "AWS_ACCESS_KEY_ID": "AKIA1"}, "AWS_SECRET_ACCESS_KEY: is required"),
        ({**S3, "AWS_ENDPOINT_URL_S3": "minio:9000"}, "AWS_ENDPOINT_URL_S3: must be an http(s) URL"),
        ({**S3, "S3_PREFIX": "/videos/"}, "S3_PREFIX: must not start with /"),
    ],
)
def test_contradictions_name_the_variable_and_no_secret(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, **env)
    assert named in str(caught.value)
    assert "s3-secret-9921" not in str(caught.value) and "b2-secret-4411" not in str(caught.value)


def test_secrets_stay_out_of_the_summary_and_the_repr() -> None:
    settings = load_settings(None, **S3, AWS_SESSION_TOKEN="token-77")
    shown = f"{settings.summary()} {settings!r}"
    assert "s3-secret-9921" not in shown and "token-77" not in shown and "AKIA1" in shown


TARGET = {"url": "https://b.example/k?X-Amz-Signature=abc", "storage_key": "k", "serve_url": "https://o.example/v"}


@pytest.mark.parametrize(
    "bad",
    [
        {"url": "ftp://b.example/k"},
        {"url": "https://user:pw@b.example/k"},
        {"headers": {"X-Evil": "a\r\nInjected: 1"}},
        {"headers": {"Bad Name": "x"}},
        {"storage_key": ""},
        {"url": "https://b.example/" + "x" * 9000},
    ],
)
def test_an_output_target_is_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        OutputTarget.model_validate({"video": {**TARGET, **bad}})


def test_an_output_targets_url_stays_out_of_its_repr() -> None:
    target = OutputTarget.model_validate({"video": {**TARGET, "headers": {"Authorization": "tok-1"}}})
    assert "X-Amz-Signature" not in repr(target) and "tok-1" not in repr(target)
