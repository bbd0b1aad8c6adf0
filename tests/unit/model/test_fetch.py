"""model/fetch.py and cli/download_model.py in this process: MODEL_PATH, the hub cache, and one clear error when
the model cannot be had. No test reaches the network: huggingface_hub is offline (`huggingface_hub.constants`
patched). The cases driven by the environment run the command as a process: tests/process/test_download_model.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support import REPO

from worker_app_fastwan.cli import download_model as download_command
from worker_app_fastwan.cli.download_model import main_download
from worker_app_fastwan.core.errors import ModelUnavailable
from worker_app_fastwan.core.settings import DEFAULT_MODEL_ID, Settings, load_settings
from worker_app_fastwan.model.fetch import download_model, resolve_model_source

REPO_ROOT = REPO
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


def test_with_json_logs_the_download_progress_is_logged_not_drawn(monkeypatch, caplog, capsys):
    monkeypatch.setattr(download_command, "LOG_PROGRESS_EVERY_S", 0.0)
    bar_class = download_command.logged_progress()
    with caplog.at_level("INFO", logger="worker_app_fastwan.cli.download_model"):
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
