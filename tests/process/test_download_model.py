"""`download-model` and the model's imports as real processes, configured by their environment (huggingface_hub
reads it when first imported, as the CLI does in a container). No test reaches the network: either
huggingface_hub is offline, or HF_ENDPOINT is a closed loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from support import REPO

from worker_app_fastwan.core.settings import DEFAULT_MODEL_ID, Settings

REPO_ROOT = REPO
SETTING_NAMES = set(Settings.model_fields)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: connecting is refused at once


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no worker setting or HF variable leaks in from the test runner."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES and not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


def test_offline_download_subprocess_exits_3_with_one_line(tmp_path):
    env = _env(tmp_path, HF_HUB_OFFLINE="1")
    proc, took = _run(["-m", "worker_app_fastwan.cli.download_model"], env, tmp_path)
    assert proc.returncode == 3, proc.stderr  # ExitCode.MODEL_UNAVAILABLE
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert DEFAULT_MODEL_ID in lines[0] and "offline" in lines[0] and "MODEL_PATH" in lines[0]
    assert str(tmp_path / "hf-home" / "hub") in lines[0]  # HF_HOME is honoured
    assert took < 20


def test_unreachable_hub_subprocess_is_fast_and_one_line(tmp_path):
    port = _closed_port()
    env = _env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2")
    proc, took = _run(["-m", "worker_app_fastwan.cli.download_model"], env, tmp_path)
    assert proc.returncode == 3, proc.stderr  # ExitCode.MODEL_UNAVAILABLE
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert DEFAULT_MODEL_ID in lines[0] and "network error" in lines[0]
    assert took < 20
    assert not any((tmp_path / "hf-home").rglob("*.safetensors"))


def test_cli_download_model_subcommand(tmp_path):
    """`python -m worker_app_fastwan download-model` is the documented command."""
    proc, _ = _run(["-m", "worker_app_fastwan", "download-model"], _env(tmp_path, HF_HUB_OFFLINE="1"), tmp_path)
    assert proc.returncode == 3, proc.stderr  # ExitCode.MODEL_UNAVAILABLE
    error = json.loads(proc.stderr.strip().splitlines()[-1])  # piped: the error is a JSON record too
    assert error["exit_code"] == 3 and DEFAULT_MODEL_ID in error["event"], proc.stderr


def test_module_import_does_not_import_the_hub():
    code = "import sys; import worker_app_fastwan.model.fetch; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_missing_weights_are_refused_before_the_model_libraries_are_imported(tmp_path: Path) -> None:
    """The GPU child's `make_backend` says "no weights" without paying seconds for transformers and diffusers."""
    code = (
        "import sys\n"
        "from worker_app_fastwan.core.errors import ModelUnavailable\n"
        "from worker_app_fastwan.pipelines import make_backend\n"
        "from worker_app_fastwan.core.settings import load_settings\n"
        "backend = {'PIPELINE_BACKEND': 'diffusers', 'ALLOW_CPU_INFERENCE': True}\n"
        "settings = load_settings(None, STATE_DIR=sys.argv[1], **backend)\n"
        "try:\n"
        "    make_backend(settings)\n"
        "except ModelUnavailable as exc:\n"
        "    print('refused:', exc)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "state")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    refused, imported = done.stdout.splitlines()[-2:]
    assert refused.startswith(f"refused: model {DEFAULT_MODEL_ID} is") and "not in the cache" in refused, refused
    assert imported == "[]", "refused before torch, transformers or diffusers were imported"
