"""The CUDA side of doctor, run in a spawned process: the parent never imports torch, and a broken driver
cannot take the doctor down with it. Returns plain data."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

# The CUDA runtime a torch build needs → the lowest driver that runs it (NVIDIA's CUDA toolkit release
# notes, "minimum required driver version" for Linux). The image's torch is a CUDA 13.0 build.
MIN_DRIVER = {(13, 0): 580, (12, 9): 575, (12, 8): 570, (12, 6): 560, (12, 4): 550, (12, 1): 530}
PROBE_TIMEOUT_S = 120


@dataclass
class Gpu:
    index: int
    name: str
    total_gib: float
    free_gib: float


@dataclass
class CudaFacts:
    torch_version: str = ""
    cuda_version: str | None = None  # torch.version.cuda: None on a CPU-only build
    available: bool = False
    why_not: str = ""
    driver: str | None = None  # from nvidia-smi
    gpus: list[Gpu] = field(default_factory=list)
    error: str = ""


def _driver_version() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.stdout.strip().splitlines()
    return first[0].strip() if out.returncode == 0 and first else None


def probe() -> CudaFacts:
    """torch's build, whether CUDA works, and every GPU's name and memory (runs in the child)."""
    import torch

    facts = CudaFacts(torch_version=torch.__version__, cuda_version=torch.version.cuda, driver=_driver_version())
    if facts.cuda_version is None:
        facts.why_not = f"torch {facts.torch_version} is a CPU-only build"
        return facts
    try:
        facts.available = torch.cuda.is_available()
        if not facts.available:
            facts.why_not = "torch.cuda.is_available() is False (no GPU visible, or no NVIDIA driver)"
            return facts
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            facts.gpus.append(Gpu(index, torch.cuda.get_device_name(index), total / 2**30, free / 2**30))
    except Exception as exc:  # noqa: BLE001 - a broken CUDA set-up is a finding, not a crash
        facts.available = False
        facts.why_not = f"CUDA failed: {type(exc).__name__}: {str(exc)[:200]}"
    return facts


def probe_in_child() -> CudaFacts:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(probe).result(timeout=PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the probe process died or hung
            return CudaFacts(error=f"the CUDA probe failed: {type(exc).__name__}: {str(exc)[:200]}")


def driver_needed(cuda_version: str | None) -> int | None:
    """The lowest driver major version for torch's CUDA build, or None when unknown."""
    if not cuda_version:
        return None
    major, minor = (int(p) for p in cuda_version.split(".")[:2])
    known = [v for v in MIN_DRIVER if v <= (major, minor)]
    return MIN_DRIVER[max(known)] if known else None
