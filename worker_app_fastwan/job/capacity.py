"""What this worker can take: the capabilities a claim announces, and the check a job passes before any GPU
work (a mode the backend lacks, a size the card's memory cannot hold)."""

from __future__ import annotations

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.protocol import Capabilities
from worker_app_fastwan.core.schema import MAX_FRAMES, MAX_SIDE, JobInput
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.job.modes import check_mode, enabled_modes


def capabilities(settings: Settings, device: DeviceInfo | None) -> Capabilities:
    modes = enabled_modes(settings, device)
    return Capabilities(modes=modes, max_width=MAX_SIDE, max_height=MAX_SIDE, max_frames=MAX_FRAMES)


def check_capacity(settings: Settings, device: DeviceInfo | None, job: JobInput, mode: str) -> None:
    """Raise `JobFailure(invalid_input)` for what this worker, backend or card cannot do."""
    check_mode(mode, settings, device)
    if device is not None and device.device.startswith("cuda"):
        from worker_app_fastwan.model.offload import check_job_fits

        memory_gib = device.memory_total_mb / 1024
        args = (job.width, job.height, job.num_frames, memory_gib, device.offload_profile)
        check_job_fits(*args, vae_dtype=settings.VAE_DTYPE, cudnn_benchmark=settings.CUDNN_BENCHMARK)
