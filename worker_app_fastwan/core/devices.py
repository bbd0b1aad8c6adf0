"""Which devices the buffer worker runs on: one slot per entry of GPU_DEVICES (or per CUDA device it sees).

`GPU_DEVICES=auto` (default) counts the CUDA devices this process may use: the entries of
CUDA_VISIBLE_DEVICES when that is set, else what NVML (nvidia-ml-py, no torch in the parent) enumerates.
Two or more make as many slots, each pinned to one of them; none or one make the single slot of a
one-GPU worker, whose GPU process keeps the environment it would have had anyway. An explicit list
(`0,1,3`, GPU UUIDs, or `cpu,cpu` for tests) makes one slot per entry, in that order; slot *n* is the
entry at position *n*, so a slot's number, and with it its worker id, is stable across restarts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

CPU = "cpu"
# A CUDA device as CUDA_VISIBLE_DEVICES names one: an index, or a GPU / MIG UUID.
_DEVICE = re.compile(r"^(cpu|\d{1,3}|(GPU|MIG)-[A-Za-z0-9/-]{1,80})$")
MAX_SLOTS = 16
MAX_ID_LEN = 128  # the protocol's worker id limit


@dataclass(frozen=True)
class DeviceInfo:
    """What a loaded backend reports about its device (the GPU child's `Ready`, claims' capabilities)."""

    backend: str
    model: str
    device: str = "cpu"
    name: str = "cpu"
    memory_used_mb: int = 0
    memory_total_mb: int = 0
    supports_i2v: bool = True
    offload_profile: str = "none"


@dataclass(frozen=True)
class SlotDevice:
    """Slot `index`: its device as CUDA_VISIBLE_DEVICES names it, `cpu`, or None (the process's own view)."""

    index: int
    device: str | None

    def child_env(self) -> dict[str, str]:
        """What the slot's GPU process adds to its environment so that it sees only its own device."""
        if self.device is None:
            return {}
        # An empty list hides every GPU: torch.cuda.is_available() is then False and the backend uses the CPU.
        return {"CUDA_VISIBLE_DEVICES": "" if self.device == CPU else self.device}

    @property
    def label(self) -> str:
        return self.device or "default"


def parse_gpu_devices(value: str) -> list[str] | None:
    """`auto` → None; else the list of devices. Raises ValueError with a message fit for the setting."""
    text = value.strip()
    if text.lower() == "auto":
        return None
    entries = [part.strip() for part in text.split(",")]
    if not text or any(not e for e in entries):
        raise ValueError("use `auto` or a comma-separated list of devices such as `0,1,3` or `cpu,cpu`")
    if len(entries) > MAX_SLOTS:
        raise ValueError(f"at most {MAX_SLOTS} devices")
    for entry in entries:
        if not _DEVICE.match(entry):
            raise ValueError(f"{entry!r} is not a device (a CUDA index such as 0, a GPU-/MIG- UUID, or cpu)")
    gpus = [e for e in entries if e != CPU]
    twice = sorted({e for e in gpus if gpus.count(e) > 1})
    if twice:
        raise ValueError(f"device {twice[0]} is listed twice: one slot per GPU (two would share its memory)")
    return entries


NvmlCount = Callable[[], int]


def nvml_device_count() -> int:
    """CUDA devices NVML sees; 0 where there is no NVIDIA driver (a CPU box)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return 0
    finally:
        pynvml.nvmlShutdown()


def visible_cuda_devices(environ: Mapping[str, str], nvml_count: NvmlCount = nvml_device_count) -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES would name them."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        # CUDA stops at the first invalid entry ("-1" is the usual way to hide every GPU).
        devices = []
        for entry in (e.strip() for e in listed.split(",")):
            if not entry or not _DEVICE.match(entry) or entry == CPU:
                break
            devices.append(entry)
        return devices
    return [str(i) for i in range(nvml_count())]


def plan_slots(
    gpu_devices: str, environ: Mapping[str, str], nvml_count: NvmlCount = nvml_device_count
) -> list[SlotDevice]:
    """One `SlotDevice` per slot, from the GPU_DEVICES setting (already validated by the settings)."""
    listed = parse_gpu_devices(gpu_devices)
    if listed is None:
        seen = visible_cuda_devices(environ, nvml_count)
        if len(seen) < 2:
            return [SlotDevice(0, None)]
        listed = seen[:MAX_SLOTS]
    return [SlotDevice(i, device) for i, device in enumerate(listed)]


def slot_worker_id(worker_id: str, slot: int, slots: int) -> str:
    """One slot reports as the worker itself; with several, slot n is `<worker id>-<n>` (within 128 chars)."""
    if slots == 1:
        return worker_id
    suffix = f"-{slot}"
    return worker_id[: MAX_ID_LEN - len(suffix)] + suffix
