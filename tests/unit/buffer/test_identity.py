"""Who the worker is (buffer/identity.py): an id kept across restarts, durably, and the GPU class it claims with."""

from __future__ import annotations

import re
from pathlib import Path

from worker_app_fastwan.buffer.identity import gpu_class, normalise_gpu_name, resolve_worker_id
from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.schema import ID_PATTERN
from worker_app_fastwan.core.settings import load_settings


def test_the_id_is_made_once_and_kept_across_restarts(tmp_path: Path) -> None:
    settings = load_settings(None, STATE_DIR=tmp_path / "state")
    first = resolve_worker_id(settings)
    assert re.fullmatch(ID_PATTERN, first) and first.startswith("fastwan-")
    assert (tmp_path / "state" / "worker_id").read_text() == f"{first}\n"
    assert resolve_worker_id(settings) == first, "an outboxed status is only accepted from the same worker"


def test_a_set_id_wins_and_nothing_is_written(tmp_path: Path) -> None:
    settings = load_settings(None, STATE_DIR=tmp_path / "state", BUFFER_WORKER_ID="box-7")
    assert resolve_worker_id(settings) == "box-7"
    assert not (tmp_path / "state" / "worker_id").exists()


def test_an_invalid_id_on_disk_is_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "worker_id").write_text("no spaces/or slashes\n")
    fresh = resolve_worker_id(load_settings(None, STATE_DIR=state))
    assert re.fullmatch(ID_PATTERN, fresh)
    assert (state / "worker_id").read_text() == f"{fresh}\n"


def test_gpu_names_become_classes() -> None:
    assert normalise_gpu_name("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert normalise_gpu_name("  ") == "cpu" and normalise_gpu_name("") == "cpu"
    assert len(normalise_gpu_name("x" * 200)) == 64


def test_gpu_class_is_the_setting_or_the_card_once_known() -> None:
    device = DeviceInfo(backend="diffusers", model="m", device="cuda:0", name="NVIDIA GeForce RTX 4090")
    assert gpu_class(load_settings(None), None) == "unknown", "not loaded yet"
    assert gpu_class(load_settings(None), device) == "nvidia-geforce-rtx-4090"
    assert gpu_class(load_settings(None, GPU_CLASS="rtx4090"), device) == "rtx4090"
