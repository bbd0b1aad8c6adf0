"""The checks of `doctor` about the image against its host: the NVIDIA driver the image's torch build needs
against the one the host has, the driver capabilities the container was granted (NVENC), and the folders
the worker writes. None imports torch; each returns one `Check`."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
from pathlib import Path

from worker_app_fastwan.core.folders import folder_problems, written_folders
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.doctor.gpu import MIN_DRIVER, driver_needed
from worker_app_fastwan.doctor.report import Check, fail, ok, skip

# Where the kernel module reports its version: readable in a container even when nvidia-smi is not mounted.
PROC_DRIVER = Path("/proc/driver/nvidia/version")
NVENC_LIBRARY = "libnvidia-encode.so.1"


def torch_build() -> tuple[str, str | None]:
    """(torch's version, the CUDA version it was built for or None), read from torch/version.py: importing
    torch would take seconds and, on a broken driver, may fail."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return "not installed", None
    text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text(encoding="utf-8")
    version = re.search(r"^__version__\s*=\s*'([^']+)'", text, re.M)
    cuda = re.search(r"^cuda(?::\s*[^=]+)?\s*=\s*'([^']+)'", text, re.M)
    return (version.group(1) if version else "unknown"), (cuda.group(1) if cuda else None)


def host_driver(proc_file: Path = PROC_DRIVER) -> str | None:
    """The NVIDIA kernel driver's version on this host, or None when there is none (or none visible)."""
    from worker_app_fastwan.doctor.gpu import _driver_version

    found = _driver_version()
    if found:
        return found
    try:
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", proc_file.read_text())
    except OSError:
        return None
    return match.group(1) if match else None


# The CUDA builds PyTorch publishes for the image's torch version (pytorch.org's install matrix): the image can
# be built for any of them (docs/deploy.md, "Older drivers").
TORCH_CUDA_BUILDS = ((12, 6), (13, 0))


def older_build_for(driver_major: int) -> str | None:
    """The newest published CUDA build a driver of this major version runs ("12.6"), or None."""
    fits = [cuda for cuda in TORCH_CUDA_BUILDS if MIN_DRIVER[cuda] <= driver_major]
    return ".".join(map(str, max(fits))) if fits else None


def driver_check(settings: Settings, torch_version: str, cuda: str | None, driver: str | None) -> Check:
    """One line: the driver this image's torch needs, what the host has, and what to do when it is too old."""
    needs_gpu = settings.PIPELINE_BACKEND != "tiny"
    host = f"host has {driver}" if driver else "host: no NVIDIA driver visible"
    if cuda is None:
        return skip("driver", f"torch {torch_version} is a CPU build: needs no NVIDIA driver; {host}")
    want = driver_needed(cuda)
    need = f"torch {torch_version} (CUDA {cuda}) needs NVIDIA driver ≥ {want}" if want else f"CUDA {cuda}"
    if driver is None:
        hint = "run with --gpus all (and the NVIDIA container toolkit)"
        return (fail if needs_gpu else skip)("driver", f"{need}; {host}: {hint}")
    if want is not None and int(driver.split(".")[0]) < want:
        older = older_build_for(int(driver.split(".")[0]))
        fix = (
            f"use an image built for CUDA {older} (docs/deploy.md, 'Older drivers': TORCH_INDEX_URL and BASE_IMAGE)"
            if older
            else "older than every CUDA build of this torch: pick a host with a newer driver"
        )
        return (fail if needs_gpu else skip)("driver", f"{need}; {host}: too old, {fix}")
    return ok("driver", f"{need}; {host}")


def granted_capabilities(env: dict[str, str] | None = None) -> set[str] | None:
    """NVIDIA_DRIVER_CAPABILITIES as a set (`all` stands for every one), or None outside the NVIDIA toolkit."""
    value = (os.environ if env is None else env).get("NVIDIA_DRIVER_CAPABILITIES")
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def nvenc_library_loads(name: str = NVENC_LIBRARY) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def nvenc_missing_why(capabilities: set[str] | None, library_loads: bool) -> str | None:
    """Why NVENC cannot work that is not the card's fault, or None when the card itself is the question.
    `capabilities` None: not in a container of the NVIDIA toolkit (there, no library means no driver)."""
    if capabilities is not None and not capabilities & {"video", "all"}:
        granted = ",".join(sorted(capabilities)) or "(none)"
        return (
            f"the container was not granted the `video` driver capability (NVIDIA_DRIVER_CAPABILITIES={granted}), "
            "so the NVIDIA toolkit did not mount the encoder library: add video to NVIDIA_DRIVER_CAPABILITIES "
            "(the image sets compute,utility,video; check what overrides it) - not a limit of the card"
        )
    if capabilities is not None and not library_loads:
        return (
            f"the driver's encoder library {NVENC_LIBRARY} is not in this container (host driver without it, or "
            "a runtime that does not mount it) - not a limit of the card"
        )
    return None


def folders_check(settings: Settings) -> Check:
    """Every folder the worker writes (STATE_DIR, the hub cache, LOCAL_OUTPUT_DIR with local storage)."""
    folders = written_folders(settings)
    problems = folder_problems(settings)
    if problems:
        return fail("folders", "; ".join(problems))
    names = ", ".join(f"{name} {folder}" for name, folder in folders)
    return ok("folders", f"writable by uid {os.getuid()}: {names}")
