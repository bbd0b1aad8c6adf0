"""model_fetch.py: MODEL_PATH, the hub cache, and one clear error when the model cannot be had.

No test reaches the network: either huggingface_hub is offline, or HF_ENDPOINT is a closed loopback port.
huggingface_hub reads its environment when first imported, so the environment-driven cases run in a
subprocess (as the CLI does in a container) and the in-process ones patch `huggingface_hub.constants`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker_app_fastwan import model_fetch
from worker_app_fastwan.model_fetch import ModelUnavailable, download_model, main_download, resolve_model_source
from worker_app_fastwan.settings import DEFAULT_MODEL_ID, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTING_NAMES = set(Settings.model_fields)


def _settings(**overrides: object) -> Settings:
    return load_settings(env_file=None, **overrides)


def _fake_model(folder: Path, layout: str = "index") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "index":
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanDMDPipeline"}))
    else:
        for sub in ("transformer", "vae", "text_encoder"):
            (folder / sub).mkdir()
            (folder / sub / "config.json").write_text("{}")
    return folder


def _fake_cache(hub_cache: Path, model_id: str) -> Path:
    """A hub cache holding a snapshot of `model_id`, laid out as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / ("models--" + model_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return _fake_model(repo / "snapshots" / commit)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: connecting is refused at once


@pytest.fixture
def no_network(monkeypatch):
    """Any hub download attempt in this process fails the test."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        if kwargs.get("local_files_only"):
            return original(*args, **kwargs)
        raise AssertionError("a network download was attempted")

    original = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache for this process, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no worker setting or HF variable leaks in from the test runner."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES and not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


# --- MODEL_PATH -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["index", "subfolders"])
def test_model_path_is_used_without_network(tmp_path, no_network, layout):
    folder = _fake_model(tmp_path / "model", layout)
    assert resolve_model_source(_settings(MODEL_PATH=folder)) == folder.resolve()


def test_model_path_empty_folder_is_a_clear_error(tmp_path, no_network):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(ModelUnavailable) as info:
        resolve_model_source(_settings(MODEL_PATH=folder))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("MODEL_PATH:") and str(folder) in message
    assert "model_index.json" in message and "it is empty" in message


def test_model_path_without_model_parts_lists_what_is_there(tmp_path, no_network):
    folder = tmp_path / "wrong"
    (folder / "transformer").mkdir(parents=True)  # vae/ missing
    (folder / "notes.txt").write_text("x")
    with pytest.raises(ModelUnavailable, match=r"found: notes.txt, transformer"):
        resolve_model_source(_settings(MODEL_PATH=folder))


def test_download_into_a_model_path_that_already_holds_the_model_is_a_no_op(tmp_path, no_network):
    folder = _fake_model(tmp_path / "model")
    assert download_model(_settings(MODEL_PATH=folder), progress=False) == folder.resolve()


# --- the hub cache, in process ----------------------------------------------------------------------------


def test_cached_snapshot_is_used_offline(hub_cache, no_network):
    snapshot = _fake_cache(hub_cache, DEFAULT_MODEL_ID)
    assert resolve_model_source(_settings()) == snapshot


def test_other_model_id_in_cache_is_not_taken(hub_cache, no_network):
    _fake_cache(hub_cache, "someone/else")
    with pytest.raises(ModelUnavailable, match=re.escape(DEFAULT_MODEL_ID)):
        resolve_model_source(_settings())


def test_default_is_the_fullattn_name_and_the_first_upload_name_still_works(hub_cache, no_network):
    assert DEFAULT_MODEL_ID == "FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers"  # the hub collection's name
    snapshot = _fake_cache(hub_cache, "FastVideo/FastWan2.2-TI2V-5B-Diffusers")
    assert resolve_model_source(_settings(MODEL_ID="FastVideo/FastWan2.2-TI2V-5B-Diffusers")) == snapshot


def test_offline_empty_cache_is_one_line_naming_model_and_fix(hub_cache, no_network):
    with pytest.raises(ModelUnavailable) as info:
        resolve_model_source(_settings(MODEL_ID="FastVideo/FastWan2.2-TI2V-5B-Diffusers"))
    message = str(info.value)
    assert "\n" not in message
    assert "model FastVideo/FastWan2.2-TI2V-5B-Diffusers is not in the cache" in message
    assert str(hub_cache) in message and "offline" in message
    assert "MODEL_PATH" in message and "download-model" in message


def test_main_download_raises_the_one_line_error(hub_cache, no_network, capsys):
    with pytest.raises(ModelUnavailable, match=DEFAULT_MODEL_ID):
        main_download(_settings())
    assert capsys.readouterr().out == ""


# --- the real process, configured by its environment ------------------------------------------------------


def test_offline_download_subprocess_exits_3_with_one_line(tmp_path):
    env = _env(tmp_path, HF_HUB_OFFLINE="1")
    proc, took = _run(["-m", "worker_app_fastwan.model_fetch"], env, tmp_path)
    assert proc.returncode == 3, proc.stderr  # ExitCode.MODEL_UNAVAILABLE
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert DEFAULT_MODEL_ID in lines[0] and "offline" in lines[0] and "MODEL_PATH" in lines[0]
    assert str(tmp_path / "hf-home" / "hub") in lines[0]  # HF_HOME is honoured
    assert took < 20


def test_unreachable_hub_subprocess_is_fast_and_one_line(tmp_path):
    port = _closed_port()
    env = _env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2")
    proc, took = _run(["-m", "worker_app_fastwan.model_fetch"], env, tmp_path)
    assert proc.returncode == 3, proc.stderr  # ExitCode.MODEL_UNAVAILABLE
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert DEFAULT_MODEL_ID in lines[0] and "network error" in lines[0]
    assert took < 20
    assert not any((tmp_path / "hf-home").rglob("*.safetensors"))


def test_cli_download_model_subcommand(tmp_path):
    """`python -m worker_app_fastwan download-model` is the documented command."""
    if not (REPO_ROOT / "worker_app_fastwan" / "cli.py").exists():
        pytest.skip("worker_app_fastwan/cli.py not written yet")
    proc, _ = _run(["-m", "worker_app_fastwan", "download-model"], _env(tmp_path, HF_HUB_OFFLINE="1"), tmp_path)
    assert proc.returncode == 3, proc.stderr  # ExitCode.MODEL_UNAVAILABLE
    error = json.loads(proc.stderr.strip().splitlines()[-1])  # piped: the error is a JSON record too
    assert error["exit_code"] == 3 and DEFAULT_MODEL_ID in error["event"], proc.stderr


def test_module_import_does_not_import_the_hub():
    code = "import sys; import worker_app_fastwan.model_fetch; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.stdout.strip() == "False", out.stderr
    assert model_fetch.IGNORE_PATTERNS  # and the module is importable here


def test_with_json_logs_the_download_progress_is_logged_not_drawn(monkeypatch, caplog, capsys):
    monkeypatch.setattr(model_fetch, "LOG_PROGRESS_EVERY_S", 0.0)
    bar_class = model_fetch.logged_progress()
    with caplog.at_level("INFO", logger="worker_app_fastwan.model_fetch"):
        bar = bar_class(desc="Downloading bytes", total=0, unit="B", unit_scale=True, name="hub-bar")
        bar.total = 4000  # the hub grows the total as it learns each file's size
        bar.update(1000)
        bar.update(3000)
        bar.close()
        files = bar_class(desc="Fetching 2 files", total=2)  # counts files, not bytes: not logged
        files.update(2)
        files.close()
    seen = [(r.bytes, r.total_bytes, r.percent) for r in caplog.records if r.getMessage() == "downloading the model"]
    assert seen[0] == (1000, 4000, 25.0) and seen[-1] == (4000, 4000, 100.0)
    assert {r.bar for r in caplog.records if r.getMessage() == "downloading the model"} == {"Downloading bytes"}
    assert capsys.readouterr().err == ""  # no bar, not even a newline


def test_missing_weights_are_refused_before_the_model_libraries_are_imported(tmp_path: Path) -> None:
    """The GPU child's `make_backend` says "no weights" without paying seconds for transformers and diffusers."""
    code = (
        "import sys\n"
        "from worker_app_fastwan.model_fetch import ModelUnavailable\n"
        "from worker_app_fastwan.pipelines import make_backend\n"
        "from worker_app_fastwan.settings import load_settings\n"
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
