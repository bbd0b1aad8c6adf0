"""What this worker can take (job/capacity.py): the modes it advertises and refuses, and the card's size check."""

from __future__ import annotations

import pytest

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import MAX_FRAMES, MAX_SIDE, ErrorCode, JobInput
from worker_app_fastwan.core.settings import load_settings
from worker_app_fastwan.job.capacity import capabilities, check_capacity, check_mode, enabled_modes

CPU = DeviceInfo(backend="tiny", model="tiny")
NO_I2V = DeviceInfo(backend="fastvideo", model="m", supports_i2v=False)
CARD_24GB = DeviceInfo(
    backend="diffusers", model="m", device="cuda:0", memory_total_mb=24 * 1024, offload_profile="balanced"
)


@pytest.mark.parametrize(
    ("i2v_enabled", "device", "modes"),
    [(True, None, ["t2v", "i2v"]), (True, CPU, ["t2v", "i2v"]), (True, NO_I2V, ["t2v"]), (False, CPU, ["t2v"])],
)
def test_the_modes_advertised_are_the_backends_and_the_operators(i2v_enabled, device, modes) -> None:
    settings = load_settings(None, I2V_ENABLED=i2v_enabled)
    assert enabled_modes(settings, device) == modes
    caps = capabilities(settings, device)
    assert caps.modes == modes and (caps.max_width, caps.max_height, caps.max_frames) == (
        MAX_SIDE,
        MAX_SIDE,
        MAX_FRAMES,
    )


def test_text_to_video_is_always_taken() -> None:
    check_mode("t2v", load_settings(None, I2V_ENABLED=False), NO_I2V)  # no exception


def test_image_to_video_switched_off_is_refused_naming_the_switch() -> None:
    with pytest.raises(JobFailure) as info:
        check_mode("i2v", load_settings(None, I2V_ENABLED=False), CPU)
    assert info.value.code is ErrorCode.invalid_input and not info.value.retryable
    assert "image_url" in info.value.message and "I2V_ENABLED=false" in info.value.message


def test_image_to_video_on_a_backend_without_it_names_the_backend() -> None:
    with pytest.raises(JobFailure) as info:
        check_mode("i2v", load_settings(None), NO_I2V)
    assert "fastvideo backend" in info.value.message and "PIPELINE_BACKEND=diffusers" in info.value.message


def test_the_card_check_runs_on_cuda_only() -> None:
    big = JobInput(prompt="x", width=1280, height=1280, num_frames=241)
    settings = load_settings(None)
    check_capacity(settings, CPU, big, "t2v")  # a CPU box has no VRAM budget to check
    check_capacity(settings, None, big, "t2v")  # not loaded yet: nothing known to check against
    with pytest.raises(JobFailure) as info:
        check_capacity(settings, CARD_24GB, big, "t2v")
    assert info.value.code is ErrorCode.invalid_input and "num_frames" in info.value.message
    check_capacity(settings, CARD_24GB, JobInput(prompt="x", width=1280, height=704, num_frames=121), "t2v")


def test_the_mode_is_checked_before_the_size() -> None:
    big = JobInput(prompt="x", width=1280, height=1280, num_frames=241)
    with pytest.raises(JobFailure, match="I2V_ENABLED"):
        check_capacity(load_settings(None, I2V_ENABLED=False), CARD_24GB, big, "i2v")
