"""doctor's host memory line (issue 24, item 3): the container's cgroup limit as well as the host's RAM,
and every slot of a buffer box, loading SLOT_LOAD_CONCURRENCY at a time. Fake cgroup files, fake devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker_app_fastwan.core.settings import load_settings
from worker_app_fastwan.doctor.gpu import CudaFacts, Gpu
from worker_app_fastwan.doctor.host_memory import HostMemory, cgroup_limit, host_ram_check, read_host_memory
from worker_app_fastwan.doctor.report import Status
from worker_app_fastwan.model.host_budget import box_host_peak_gib, most_loads_at_once, slot_host_need

GIB = 2**30


def cgroup_tree(tmp_path: Path, self_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /sys/fs/cgroup of `files` (path under the mount → content) and a /proc/self/cgroup of `self_line`."""
    root = tmp_path / "sys" / "fs" / "cgroup"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(self_line + "\n")
    return root, proc


def test_cgroup_v2_memory_max_of_the_container(tmp_path: Path) -> None:
    root, proc = cgroup_tree(tmp_path, "0::/", {"memory.max": str(64 * GIB)})
    assert cgroup_limit(root, proc) == (64 * GIB, str(root / "memory.max"))
    root, proc = cgroup_tree(tmp_path / "b", "0::/", {"memory.max": "max"})
    assert cgroup_limit(root, proc) == (None, None)


def test_cgroup_v2_the_tightest_limit_above_the_process_counts(tmp_path: Path) -> None:
    files = {"kubepods/pod1/c1/memory.max": "max", "kubepods/pod1/memory.max": str(8 * GIB), "memory.max": "max"}
    root, proc = cgroup_tree(tmp_path, "0::/kubepods/pod1/c1", files)
    assert cgroup_limit(root, proc) == (8 * GIB, str(root / "kubepods/pod1/memory.max"))


def test_cgroup_v1_limit_in_bytes(tmp_path: Path) -> None:
    # v1 in a container: /proc/self/cgroup names the host's path; the mount's root is the container's cgroup.
    lines = "5:cpuset:/docker/abc\n4:memory:/docker/abc\n0::/"
    root, proc = cgroup_tree(tmp_path, lines, {"memory/memory.limit_in_bytes": str(32 * GIB)})
    assert cgroup_limit(root, proc) == (32 * GIB, str(root / "memory/memory.limit_in_bytes"))
    unlimited = {"memory/memory.limit_in_bytes": "9223372036854771712"}
    root, proc = cgroup_tree(tmp_path / "b", "4:cpu,memory:/", unlimited)
    assert cgroup_limit(root, proc) == (None, None)


def test_no_cgroup_files_means_the_hosts_ram(tmp_path: Path) -> None:
    memory = read_host_memory(tmp_path / "none", tmp_path / "missing", physical=lambda: 251 * GIB)
    assert memory.limit_bytes is None and memory.usable_gib == 251


def _facts(total_gib: float, count: int) -> CudaFacts:
    gpus = [Gpu(i, "GPU", total_gib, total_gib) for i in range(count)]
    return CudaFacts(torch_version="2.12.0", cuda_version="13.0", available=True, driver="580.1", gpus=gpus)


def test_a_container_limit_below_the_hosts_ram_fails_a_box_that_ram_would_pass(tmp_path: Path) -> None:
    """One 24 GB card (`balanced`): ≈ 25.5 GiB at load. 251 GiB of RAM, but the container may use 16."""
    settings = load_settings(None, STATE_DIR=tmp_path)
    roomy = host_ram_check(settings, _facts(23.6, 1), HostMemory(251 * GIB))
    assert roomy.status is Status.ok, roomy.line()
    capped = host_ram_check(settings, _facts(23.6, 1), HostMemory(251 * GIB, 16 * GIB, "/sys/fs/cgroup/memory.max"))
    assert capped.status is Status.fail, capped.line()
    assert "container limit 16.0 GiB (/sys/fs/cgroup/memory.max)" in capped.detail


def test_every_slot_of_a_buffer_box_counts(tmp_path: Path) -> None:
    """Eight 80 GB cards (`none`: nothing kept on the host once loaded). 64 GiB fit one load at a time plus
    seven loaded slots, not eight loads at once (≈ 204 GiB)."""
    memory = HostMemory(1000 * GIB, 64 * GIB, "memory.max")
    one = load_settings(None, STATE_DIR=tmp_path, WORKER_MODE="buffer")
    check = host_ram_check(one, _facts(79.1, 8), memory)
    assert check.status is Status.ok and "8 slots (profile none), loading 1 at a time" in check.detail, check.line()
    eight = load_settings(None, STATE_DIR=tmp_path, WORKER_MODE="buffer", SLOT_LOAD_CONCURRENCY=8)
    check = host_ram_check(eight, _facts(79.1, 8), memory)
    assert check.status is Status.fail and "SLOT_LOAD_CONCURRENCY=" in check.detail, check.line()
    explicit = load_settings(None, STATE_DIR=tmp_path, WORKER_MODE="buffer", GPU_DEVICES="0,1")
    assert "2 slots" in host_ram_check(explicit, _facts(79.1, 8), memory).detail


def test_eight_balanced_slots_need_about_190_gib_even_one_at_a_time(tmp_path: Path) -> None:
    """The issue's 8-GPU box of 24 GB cards: `balanced` keeps the text encoder and its pinned blocks on the
    host, so staggering the loads saves only one load's extra."""
    needs = [slot_host_need("balanced")] * 8
    assert 180 < box_host_peak_gib(needs, 1) < 195
    assert box_host_peak_gib(needs, 8) > box_host_peak_gib(needs, 1)
    settings = load_settings(None, STATE_DIR=tmp_path, WORKER_MODE="buffer")
    check = host_ram_check(settings, _facts(23.6, 8), HostMemory(128 * GIB))
    assert check.status is Status.fail and "fewer slots (GPU_DEVICES)" in check.detail, check.line()


@pytest.mark.parametrize("at_once", [1, 2, 3])
def test_the_peak_bound_holds_for_any_loading_order(at_once: int) -> None:
    """Simulated: slots load in every order, `at_once` at a time; no moment exceeds the bound."""
    from itertools import permutations

    needs = [slot_host_need(p) for p in ("none", "balanced", "low_vram", "none")]
    bound = box_host_peak_gib(needs, at_once)
    for order in permutations(range(len(needs))):
        waves = [order[i : i + at_once] for i in range(0, len(order), at_once)]
        done: list[int] = []
        for wave in waves:
            held = sum(needs[i].loaded_gib for i in done) + sum(needs[i].loading_gib for i in wave)
            assert held <= bound + 1e-9
            done += wave
    assert most_loads_at_once(needs, bound) >= at_once
