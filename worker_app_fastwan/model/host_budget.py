"""Host memory of a box of slots: what its GPU processes need together while they load and once loaded.

Each slot's GPU process reads every weight through host memory while it loads (`host_ram_at_load_gib`) and
keeps some once loaded (`host_ram_loaded_gib`: none under `none`, the text encoder under `balanced`,
everything under `low_vram`). Buffer mode lets at most SLOT_LOAD_CONCURRENCY of them load at once
(`buffer/box.py`), so at any moment a box holds at most that many loads and the others' loaded share: the
peak is bounded by every slot's loaded share plus the largest `at_once` extra shares of a load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker_app_fastwan.model.memory_budget import host_ram_at_load_gib, host_ram_loaded_gib


@dataclass(frozen=True)
class SlotHostNeed:
    """One slot's host memory in GiB: while its GPU process loads, and once it has loaded."""

    loading_gib: float
    loaded_gib: float


def slot_host_need(profile: str, *, vae_dtype: str = "bfloat16") -> SlotHostNeed:
    return SlotHostNeed(
        host_ram_at_load_gib(profile, vae_dtype=vae_dtype), host_ram_loaded_gib(profile, vae_dtype=vae_dtype)
    )


def box_host_peak_gib(slots: Sequence[SlotHostNeed], at_once: int) -> float:
    """An upper bound of the box's host memory, whatever order the slots load in (a slot that has not
    loaded yet holds less than its loaded share)."""
    extra = sorted((max(s.loading_gib - s.loaded_gib, 0.0) for s in slots), reverse=True)
    return sum(s.loaded_gib for s in slots) + sum(extra[: max(at_once, 1)])


def most_loads_at_once(slots: Sequence[SlotHostNeed], usable_gib: float) -> int:
    """The largest SLOT_LOAD_CONCURRENCY whose peak fits `usable_gib` (0: not even one at a time)."""
    fitting = [k for k in range(1, len(slots) + 1) if box_host_peak_gib(slots, k) <= usable_gib]
    return max(fitting, default=0)
