"""doctor's host memory check: the memory this container may use (the host's RAM, or less under a cgroup
limit), against what every slot's GPU process needs while they load SLOT_LOAD_CONCURRENCY at a time.

Docker's `--memory`, Kubernetes' limits and most GPU clouds cap a container below the host's RAM; the kernel
then kills the worker at the cap, however much RAM `free` shows. cgroup v2 keeps the cap in `memory.max`
(`max`: none), v1 in `memory/memory.limit_in_bytes` (a huge number: none), on the process's own cgroup or
one above it; inside a container its own cgroup is the mount's root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker_app_fastwan.core.devices import CPU, plan_slots
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.doctor.gpu import CudaFacts, Gpu
from worker_app_fastwan.doctor.report import Check, fail, ok, skip
from worker_app_fastwan.model.host_budget import box_host_peak_gib, most_loads_at_once, slot_host_need
from worker_app_fastwan.model.memory_budget import FASTVIDEO
from worker_app_fastwan.model.offload import choose_profile

GIB = 2**30
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
UNLIMITED = 2**60  # cgroup v1 says "no limit" with a page-rounded 2**63 - 1


@dataclass(frozen=True)
class HostMemory:
    physical_bytes: int
    limit_bytes: int | None = None  # the tightest cgroup limit; None: none
    limit_file: str | None = None

    @property
    def usable_gib(self) -> float:
        limit = self.physical_bytes if self.limit_bytes is None else min(self.limit_bytes, self.physical_bytes)
        return limit / GIB

    def describe(self) -> str:
        ram = f"RAM {self.physical_bytes / GIB:.0f} GiB"
        if self.limit_bytes is None:
            return f"{ram}, no cgroup memory limit"
        return f"{ram}, container limit {self.limit_bytes / GIB:.1f} GiB ({self.limit_file})"


def physical_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def read_host_memory(
    root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP, physical: Callable[[], int] = physical_bytes
) -> HostMemory:
    limit, where = cgroup_limit(root, self_cgroup)
    return HostMemory(physical(), limit, where)


def cgroup_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> tuple[int | None, str | None]:
    """The tightest memory limit on this process's cgroup or one above it, and the file that sets it."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    files = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:  # v2
            files += [root / rel / "memory.max" for rel in _up_from(path)]
        elif "memory" in controllers.split(","):  # v1
            files += [root / "memory" / rel / "memory.limit_in_bytes" for rel in _up_from(path)]
    # In a container, /proc/self/cgroup may name the host's path while the mount's root is its own cgroup.
    files += [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    best: tuple[int, str] | None = None
    for file in dict.fromkeys(files):
        value = _limit_in(file)
        if value is not None and (best is None or value < best[0]):
            best = (value, str(file))
    return best if best is not None else (None, None)


def _up_from(path: str) -> list[str]:
    """`/a/b` → `a/b`, `a`, `` (the cgroup and each one above it, relative to the mount)."""
    parts = [p for p in path.strip("/").split("/") if p]
    return ["/".join(parts[:n]) for n in range(len(parts), -1, -1)]


def _limit_in(file: Path) -> int | None:
    try:
        text = file.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit():
        return None
    value = int(text)
    return None if value >= UNLIMITED else value


def slot_profiles(settings: Settings, facts: CudaFacts) -> list[str]:
    """The profile each slot's GPU process will run: one slot in queue mode, one per device in buffer mode."""
    if settings.WORKER_MODE == "buffer":
        devices = [slot.device for slot in plan_slots(settings.GPU_DEVICES, {}, lambda: len(facts.gpus))]
    else:
        devices = [None]
    profiles = []
    for device in devices:
        if settings.PIPELINE_BACKEND == "fastvideo":
            profiles.append(FASTVIDEO)
            continue
        gpu = _gpu_for(device, facts.gpus)
        vram = gpu.total_gib if gpu is not None else None
        profiles.append(
            choose_profile(
                settings.OFFLOAD_PROFILE, vram, vae_dtype=settings.VAE_DTYPE, cudnn_benchmark=settings.CUDNN_BENCHMARK
            )
        )
    return profiles


def _gpu_for(device: str | None, gpus: list[Gpu]) -> Gpu | None:
    """The GPU a slot's device names (an index; a UUID is taken as the first GPU's kind), None for `cpu`."""
    if device == CPU or not gpus:
        return None
    if device is not None and device.isdigit() and int(device) < len(gpus):
        return gpus[int(device)]
    return gpus[0]


def host_ram_check(settings: Settings, facts: CudaFacts, memory: HostMemory | None = None) -> Check:
    if settings.PIPELINE_BACKEND == "tiny":
        return skip("host ram", "PIPELINE_BACKEND=tiny needs no weights in RAM")
    memory = memory or read_host_memory()
    profiles = slot_profiles(settings, facts)
    needs = [slot_host_need(p, vae_dtype=settings.VAE_DTYPE) for p in profiles]
    at_once = min(settings.SLOT_LOAD_CONCURRENCY, len(needs)) if settings.WORKER_MODE == "buffer" else 1
    peak = box_host_peak_gib(needs, at_once)
    usable = memory.usable_gib
    kinds = ", ".join(sorted(set(profiles)))
    what = (
        f"{len(needs)} slots (profile {kinds}), loading {at_once} at a time (SLOT_LOAD_CONCURRENCY)"
        if len(needs) > 1
        else f"profile {kinds}"
    )
    line = f"{usable:.0f} GiB usable ({memory.describe()}); {what} needs ≈ {peak:.0f} GiB at its peak"
    best = most_loads_at_once(needs, usable)
    if peak <= usable:
        if len(needs) > 1 and best > at_once:
            line += f"; SLOT_LOAD_CONCURRENCY={best} would fit too (faster start)"
        return ok("host ram", line)
    if best >= 1:
        return fail("host ram", f"{line}; set SLOT_LOAD_CONCURRENCY={best} (or less)")
    fix = "fewer slots (GPU_DEVICES) or " if len(needs) > 1 else ""
    return fail("host ram", f"{line}; use {fix}a box (or container limit) with more memory")
