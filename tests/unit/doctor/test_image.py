"""`doctor` and the settings check about the image against its host (issue 24, items 2, 5 and 12): the folders
the worker writes, the NVIDIA driver the image's torch needs, and NVENC's driver capability. In-process, with
the host's facts passed in."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from worker_app_fastwan.core.folders import folder_problem, folder_problems, written_folders
from worker_app_fastwan.core.settings import Settings, load_settings
from worker_app_fastwan.doctor import checks
from worker_app_fastwan.doctor.image import (
    driver_check,
    folders_check,
    host_driver,
    nvenc_missing_why,
)
from worker_app_fastwan.doctor.report import Status


def settings(tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {"STATE_DIR": tmp_path / "state", "STORAGE_BACKEND": "local"}
    return load_settings(env_file=None, **{**base, **overrides})


# --- item 12: the driver the image needs, and the one the host has -------------------------------------------


@pytest.mark.parametrize(
    ("cuda", "driver", "mark", "says"),
    [
        ("13.0", "580.65.06", Status.ok, "needs NVIDIA driver ≥ 580; host has 580.65.06"),
        ("13.0", "570.86.10", Status.fail, "too old, use an image built for CUDA 12.6"),
        ("13.0", "550.54.15", Status.fail, "older than every CUDA build of this torch"),
        ("12.6", "565.57.01", Status.ok, "needs NVIDIA driver ≥ 560; host has 565.57.01"),
        ("13.0", None, Status.fail, "no NVIDIA driver visible: run with --gpus all"),
    ],
)
def test_one_line_names_the_driver_needed_and_the_host_s(tmp_path, cuda, driver, mark, says):
    check = driver_check(settings(tmp_path), "2.13.0", cuda, driver)
    assert check.status is mark and says in check.detail, check.line()
    assert f"torch 2.13.0 (CUDA {cuda})" in check.detail and "\n" not in check.line()


def test_cpu_build_and_tiny_backend_need_no_driver(tmp_path):
    cpu = driver_check(settings(tmp_path), "2.13.0+cpu", None, None)
    assert cpu.status is Status.skip and "CPU build: needs no NVIDIA driver" in cpu.detail
    tiny = driver_check(settings(tmp_path, PIPELINE_BACKEND="tiny"), "2.13.0", "13.0", "550.54.15")
    assert tiny.status is Status.skip and "too old" in tiny.detail


def test_host_driver_from_the_kernel_module_when_nvidia_smi_is_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    version = tmp_path / "version"
    version.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.10  Thu Jan 16 2025\nGCC version:  gcc 12\n"
    )
    assert host_driver(version) == "570.86.10"
    assert host_driver(tmp_path / "absent") is None


# --- item 5: NVENC without the `video` capability is not the card's fault -------------------------------------


def test_missing_video_capability_is_named_not_the_card(tmp_path):
    why = nvenc_missing_why({"compute", "utility"}, library_loads=False)
    assert why is not None and "`video` driver capability" in why and "not a limit of the card" in why
    no_video = {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
    check = checks.nvenc_check(settings(tmp_path), works=False, env=no_video, library_loads=False)
    assert check.status is Status.warn and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in check.detail
    assert "not every GPU has it" not in check.detail
    explicit = checks.nvenc_check(settings(tmp_path, ENCODER="h264_nvenc"), works=False, env=no_video)
    assert explicit.status is Status.fail


def test_nvenc_blames_the_card_only_when_the_container_has_what_it_needs(tmp_path):
    assert nvenc_missing_why({"compute", "utility", "video"}, library_loads=True) is None
    assert nvenc_missing_why({"all"}, library_loads=True) is None
    assert nvenc_missing_why(None, library_loads=True) is None  # a bare-metal box
    assert nvenc_missing_why(None, library_loads=False) is None  # no driver outside a container: not this check's
    lib = nvenc_missing_why({"all"}, library_loads=False)
    assert lib is not None and "libnvidia-encode.so.1" in lib
    granted = {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility,video"}
    card = checks.nvenc_check(settings(tmp_path), works=False, env=granted, library_loads=True)
    assert card.status is Status.skip and "not available on this GPU" in card.detail
    assert checks.nvenc_check(settings(tmp_path), works=True).status is Status.ok


# --- item 2: every folder the worker writes ------------------------------------------------------------------


def test_the_folders_the_worker_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    local = written_folders(settings(tmp_path, LOCAL_OUTPUT_DIR=tmp_path / "videos"))
    assert [name for name, _ in local] == ["STATE_DIR", "LOCAL_OUTPUT_DIR", "HF_HOME"]
    b2 = settings(
        tmp_path, STORAGE_BACKEND="b2", B2_KEY_ID="k", B2_APP_KEY="s", B2_BUCKET_NAME="b", MODEL_PATH=tmp_path
    )
    assert [name for name, _ in written_folders(b2)] == ["STATE_DIR"], "no local videos, no download"
    tiny = settings(tmp_path, PIPELINE_BACKEND="tiny")
    assert "HF_HOME" not in dict(written_folders(tiny)), "the tiny model downloads nothing"


@pytest.mark.parametrize(
    ("err", "fix"),
    [
        (errno.EROFS, "mount it read-write"),
        (errno.EACCES, f"chown -R {os.getuid()}:{os.getgid()}"),
    ],
)
def test_an_unwritable_folder_is_one_line_with_its_fix(tmp_path, monkeypatch, err, fix):
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(err, os.strerror(err), str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    line = folder_problem("STATE_DIR", tmp_path / "state")
    assert line is not None and "\n" not in line
    assert line.startswith(f"STATE_DIR: {tmp_path / 'state'} is not writable by uid {os.getuid()}") and fix in line


def test_a_folder_inside_a_refused_one_is_not_named_again(tmp_path, monkeypatch):
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    state = tmp_path / "state"
    problems = folder_problems(settings(tmp_path, PIPELINE_BACKEND="tiny", LOCAL_OUTPUT_DIR=state / "outputs"))
    assert len(problems) == 1 and problems[0].startswith("STATE_DIR:"), problems


def test_doctor_checks_every_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    good = folders_check(settings(tmp_path, LOCAL_OUTPUT_DIR=tmp_path / "videos"))
    assert good.status is Status.ok and all(
        name in good.detail for name in ("STATE_DIR", "LOCAL_OUTPUT_DIR", "HF_HOME")
    )
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")  # a folder cannot be made where a file is, even for root
    bad = folders_check(settings(tmp_path, LOCAL_OUTPUT_DIR=blocked / "videos"))
    assert bad.status is Status.fail and bad.detail.startswith("LOCAL_OUTPUT_DIR:")
