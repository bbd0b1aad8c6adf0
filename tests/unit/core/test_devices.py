"""GPU_DEVICES: parsing, the slots it makes (auto, lists, CUDA_VISIBLE_DEVICES), and each slot's worker id."""

from __future__ import annotations

import pytest

from worker_app_fastwan.core.devices import (
    SlotDevice,
    parse_gpu_devices,
    plan_slots,
    slot_worker_id,
    visible_cuda_devices,
)
from worker_app_fastwan.core.settings import SettingsError, load_settings


def test_lists_parse_in_order_and_auto_means_detect() -> None:
    assert parse_gpu_devices("auto") is None
    assert parse_gpu_devices(" AUTO ") is None
    assert parse_gpu_devices("0,1,3") == ["0", "1", "3"]
    assert parse_gpu_devices("cpu, cpu") == ["cpu", "cpu"]
    assert parse_gpu_devices("GPU-8f4c2a9e-1b2c-4d5e-9f00-aabbccddeeff,1") == [
        "GPU-8f4c2a9e-1b2c-4d5e-9f00-aabbccddeeff",
        "1",
    ]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "comma-separated list"),
        ("0,,1", "comma-separated list"),
        ("gpu0", "'gpu0' is not a device"),
        ("0;1", "'0;1' is not a device"),
        ("1,0,1", "device 1 is listed twice"),
        (",".join(["cpu"] * 17), "at most 16"),
    ],
)
def test_bad_lists_stop_start_up_with_one_line_naming_the_setting(value: str, says: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(None, GPU_DEVICES=value)
    assert str(err.value).startswith("invalid setting GPU_DEVICES: ") and says in str(err.value)
    assert "\n" not in str(err.value)


def test_settings_default_is_auto_and_keep_a_valid_list() -> None:
    assert load_settings(None).GPU_DEVICES == "auto"
    assert load_settings(None, GPU_DEVICES=" cpu,cpu ").GPU_DEVICES == "cpu,cpu"


def _no_nvml() -> int:
    raise AssertionError("NVML must not be asked when CUDA_VISIBLE_DEVICES is set")


def test_visible_devices_follow_cuda_visible_devices_up_to_its_first_invalid_entry() -> None:
    assert visible_cuda_devices({"CUDA_VISIBLE_DEVICES": "2,3"}, _no_nvml) == ["2", "3"]
    assert visible_cuda_devices({"CUDA_VISIBLE_DEVICES": ""}, _no_nvml) == []
    assert visible_cuda_devices({"CUDA_VISIBLE_DEVICES": "-1"}, _no_nvml) == []
    assert visible_cuda_devices({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, _no_nvml) == ["0"]
    assert visible_cuda_devices({}, lambda: 4) == ["0", "1", "2", "3"]
    assert visible_cuda_devices({}, lambda: 0) == []


def test_nvml_on_a_box_without_a_driver_counts_zero() -> None:
    from worker_app_fastwan.core.devices import nvml_device_count

    assert nvml_device_count() == 0  # no NVIDIA library on the test machines: no crash, no GPU


def test_auto_makes_one_slot_per_visible_gpu_and_one_unpinned_slot_otherwise() -> None:
    assert plan_slots("auto", {}, lambda: 4) == [SlotDevice(i, str(i)) for i in range(4)]
    assert plan_slots("auto", {"CUDA_VISIBLE_DEVICES": "5,7"}, _no_nvml) == [SlotDevice(0, "5"), SlotDevice(1, "7")]
    # One GPU or none: the single slot of a one-GPU worker, with the environment it always had.
    assert plan_slots("auto", {}, lambda: 1) == [SlotDevice(0, None)]
    assert plan_slots("auto", {}, lambda: 0) == [SlotDevice(0, None)]
    assert plan_slots("auto", {}, lambda: 1)[0].child_env() == {}


def test_explicit_lists_pin_each_slot_to_its_device() -> None:
    slots = plan_slots("0,1,3", {}, _no_nvml)
    assert [(s.index, s.device) for s in slots] == [(0, "0"), (1, "1"), (2, "3")]
    assert [s.child_env() for s in slots] == [{"CUDA_VISIBLE_DEVICES": d} for d in ("0", "1", "3")]
    cpu = plan_slots("cpu,cpu", {"CUDA_VISIBLE_DEVICES": "0,1"}, _no_nvml)
    # A CPU slot hides every GPU from its process, so torch falls back to the CPU.
    assert [s.child_env() for s in cpu] == [{"CUDA_VISIBLE_DEVICES": ""}] * 2


def test_one_slot_keeps_the_worker_id_and_several_number_theirs_from_zero() -> None:
    assert slot_worker_id("box-7", 0, 1) == "box-7"
    assert [slot_worker_id("box-7", n, 3) for n in range(3)] == ["box-7-0", "box-7-1", "box-7-2"]
    long_id = "w" * 128
    ids = [slot_worker_id(long_id, n, 12) for n in (0, 11)]
    assert [len(i) for i in ids] == [128, 128] and ids[0].endswith("-0") and ids[1].endswith("-11")


def test_queue_mode_runs_one_slot_and_says_so_when_it_sees_several(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from worker_app_fastwan.queue_mode import one_slot

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with caplog.at_level("WARNING"):
        assert one_slot(load_settings(None)).child_env() == {"CUDA_VISIBLE_DEVICES": "2"}
    assert [r.message for r in caplog.records if "queue mode runs one slot" in r.message]
    caplog.clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert one_slot(load_settings(None)).child_env() == {}, "one GPU: the environment it always had"
    assert not caplog.records
