"""The job schema's rules and the settings' start-up checks."""

from __future__ import annotations

import pytest

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import ErrorCode, JobInput
from worker_app_fastwan.core.settings import SettingsError, load_settings
from worker_app_fastwan.edge.job_input import parse_job_input

BAD_FIELDS = [
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({"prompt": "a", "negative_prompt": "n" * 4001}, "negative_prompt"),
    ({"prompt": "a", "image_url": "ftp://host/x.png"}, "image_url"),
    ({"prompt": "a", "image_url": "not a url"}, "image_url"),
    ({"prompt": "a", "width": 500}, "width"),
    ({"prompt": "a", "width": 96}, "width"),
    ({"prompt": "a", "height": 1312}, "height"),
    ({"prompt": "a", "num_frames": 8}, "num_frames"),
    ({"prompt": "a", "num_frames": 1}, "num_frames"),
    ({"prompt": "a", "num_frames": 245}, "num_frames"),
    ({"prompt": "a", "fps": 0}, "fps"),
    ({"prompt": "a", "fps": 61}, "fps"),
    ({"prompt": "a", "seed": -1}, "seed"),
    ({"prompt": "a", "seed": 2**63}, "seed"),
    ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps"),
    ({"prompt": "a", "num_inference_steps": 9}, "num_inference_steps"),
    ({"prompt": "a", "num_inference_steps": 4}, "num_inference_steps"),
    ({"prompt": "a", "width": "wide"}, "width"),
    ({}, "prompt"),
]


@pytest.mark.parametrize(("data", "field"), BAD_FIELDS)
def test_every_rule_names_its_field(data, field):
    with pytest.raises(JobFailure) as err:
        parse_job_input(data)
    assert err.value.code is ErrorCode.invalid_input and not err.value.retryable
    assert err.value.message.startswith(f"{field}:"), err.value.message


def test_defaults_trimming_and_unknown_fields():
    job = parse_job_input({"prompt": "  a boat  ", "colour": "blue"})
    assert job.prompt == "a boat"
    assert (job.width, job.height, job.num_frames, job.fps, job.num_inference_steps) == (1280, 704, 121, 24, 3)
    assert job.seed is None and job.mode == "t2v"
    assert JobInput(prompt="a", image_url="https://h/x.png", width=704, height=1280).mode == "i2v"


def test_non_object_body_is_invalid_input():
    with pytest.raises(JobFailure, match="body"):
        parse_job_input(["prompt"])


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PIPELINE_BACKEND": "onnx"}, "PIPELINE_BACKEND"),
        ({"WORKER_MODE": "batch"}, "WORKER_MODE"),
        ({"STORAGE_BACKEND": "gcs"}, "STORAGE_BACKEND"),
        ({"B2_KEY_ID": "k", "B2_BUCKET_NAME": "b"}, "B2_APP_KEY"),
        ({"STORAGE_BACKEND": "b2"}, "B2_KEY_ID"),
        ({"ORCHESTRATOR_BASE_URL": "http://o"}, "INTERNAL_API_KEY"),
        ({"ORCHESTRATOR_BASE_URL": "o.example", "INTERNAL_API_KEY": "k"}, "ORCHESTRATOR_BASE_URL"),
        ({"PORT": "eighty"}, "PORT"),
        ({"HEARTBEAT_INTERVAL_S": "-1"}, "HEARTBEAT_INTERVAL_S"),
        ({"MODEL_PATH": "/no/such/folder"}, "MODEL_PATH"),
        ({"BUFFER_WORKER_ID": "has space"}, "BUFFER_WORKER_ID"),
    ],
)
def test_bad_setting_is_one_line_naming_the_variable(monkeypatch, env, variable):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as err:
        load_settings(None)
    text = str(err.value)
    assert "\n" not in text and variable in text.split(":")[0], text


def test_secrets_never_show(monkeypatch):
    monkeypatch.setenv("B2_KEY_ID", "key-id")
    monkeypatch.setenv("B2_APP_KEY", "very-secret-app-key")
    monkeypatch.setenv("B2_BUCKET_NAME", "bucket")
    monkeypatch.setenv("ORCHESTRATOR_BASE_URL", "http://orch")
    monkeypatch.setenv("INTERNAL_API_KEY", "very-secret-api-key")
    settings = load_settings(None)
    shown = repr(settings) + str(settings) + str(settings.summary())
    assert "very-secret" not in shown
    assert settings.storage == "b2" and settings.api_key() == "very-secret-api-key"


def test_storage_auto_is_local_without_b2_credentials(monkeypatch):
    for key in ("B2_KEY_ID", "B2_APP_KEY", "B2_BUCKET_NAME", "STORAGE_BACKEND"):
        monkeypatch.delenv(key, raising=False)
    assert load_settings(None).storage == "local"


def test_orchestrator_url_userinfo_is_masked_in_the_summary_and_the_client() -> None:
    from worker_app_fastwan.core.settings import load_settings, mask_userinfo
    from worker_app_fastwan.orchestrator.client import OrchestratorClient

    url = "https://ops:hunter2@orch.example:8443/base?token=s3cret"
    settings = load_settings(None, ORCHESTRATOR_BASE_URL=url, INTERNAL_API_KEY="k")
    assert settings.summary()["ORCHESTRATOR_BASE_URL"] == "https://***@orch.example:8443/base?***"
    client = OrchestratorClient.from_settings(settings)
    assert client is not None and "hunter2" not in repr(client) and "ops" not in client.shown_url
    assert "s3cret" not in repr(client) and "s3cret" not in client.shown_url
    assert mask_userinfo("http://orch:8080") == "http://orch:8080"


def test_gpu_child_settings_and_environment_carry_no_secrets() -> None:
    from worker_app_fastwan.core.child_env import child_settings, minimal_env
    from worker_app_fastwan.core.settings import load_settings

    settings = load_settings(
        None,
        ORCHESTRATOR_BASE_URL="http://u:p@o",
        INTERNAL_API_KEY="k",
        B2_KEY_ID="i",
        B2_APP_KEY="a",
        B2_BUCKET_NAME="b",
    )
    child = child_settings(settings)
    assert (child.INTERNAL_API_KEY, child.B2_APP_KEY, child.B2_KEY_ID, child.ORCHESTRATOR_BASE_URL) == (None,) * 4
    assert child.PIPELINE_BACKEND == settings.PIPELINE_BACKEND
    env = {"PATH": "/bin", "HF_TOKEN": "hf", "CUDA_VISIBLE_DEVICES": "0", "B2_APP_KEY": "a", "INTERNAL_API_KEY": "k"}
    assert minimal_env(env) == {"PATH": "/bin", "HF_TOKEN": "hf", "CUDA_VISIBLE_DEVICES": "0"}


def test_job_failure_messages_hide_local_paths() -> None:
    from worker_app_fastwan.core.errors import JobFailure

    exc = JobFailure("generation_failed", "OSError: [Errno 28] No space left: '/var/lib/fastwan/work/job-1/out.mp4'")
    assert exc.message == "OSError: [Errno 28] No space left: '…/out.mp4'" and "/var/lib" not in str(exc)
    assert JobFailure("invalid_input", "image_url: https://h/a/b.png: HTTP 404").message.endswith("/a/b.png: HTTP 404")
