"""What this worker can take: the job modes (t2v, i2v) its backend can do and the operator switched on, the
capabilities a claim announces, and the check a job passes before any GPU work (a mode it does not take, a
size the card's memory cannot hold).

Image-to-video is experimental: the 5B student was distilled on text-to-video data only (FastVideo's
maintainers on issues #806 and #864), though the conditioning here matches diffusers' exactly.
`I2V_ENABLED=false` turns it off: claims advertise `["t2v"]` and a job with an image is refused.
"""

from __future__ import annotations

from typing import Literal

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.protocol import Capabilities
from worker_app_fastwan.core.schema import MAX_FRAMES, MAX_SIDE, ErrorCode, JobInput
from worker_app_fastwan.core.settings import Settings

Mode = Literal["t2v", "i2v"]


def enabled_modes(settings: Settings, device: DeviceInfo | None) -> list[Mode]:
    """The modes to advertise (`device` None: not loaded yet, the backend's limits are not known)."""
    backend_can = device is None or device.supports_i2v
    return ["t2v", "i2v"] if settings.I2V_ENABLED and backend_can else ["t2v"]


def capabilities(settings: Settings, device: DeviceInfo | None) -> Capabilities:
    modes = enabled_modes(settings, device)
    # v1.2: every worker can upload to an output target it is handed (job/target_upload.py).
    return Capabilities(modes=modes, max_width=MAX_SIDE, max_height=MAX_SIDE, max_frames=MAX_FRAMES, output_target=True)


def check_capacity(settings: Settings, device: DeviceInfo | None, job: JobInput, mode: str) -> None:
    """Raise `JobFailure(invalid_input)` for what this worker, backend or card cannot do."""
    check_mode(mode, settings, device)
    if device is not None and device.device.startswith("cuda"):
        from worker_app_fastwan.model.offload import check_job_fits

        memory_gib = device.memory_total_mb / 1024
        args = (job.width, job.height, job.num_frames, memory_gib, device.offload_profile)
        check_job_fits(*args, vae_dtype=settings.VAE_DTYPE, cudnn_benchmark=settings.CUDNN_BENCHMARK)


def check_mode(mode: str, settings: Settings, device: DeviceInfo | None) -> None:
    """Refuse, before any work, a mode this worker does not take: `JobFailure(invalid_input)` naming why."""
    if mode != "i2v":
        return
    if not settings.I2V_ENABLED:
        raise JobFailure(
            ErrorCode.invalid_input,
            "image_url: image-to-video is switched off on this worker (I2V_ENABLED=false; it is experimental: "
            "the model was distilled on text-to-video only); send the job without image_url",
        )
    if device is not None and not device.supports_i2v:
        raise JobFailure(
            ErrorCode.invalid_input,
            f"image_url: the {device.backend} backend cannot do image-to-video; use PIPELINE_BACKEND=diffusers",
        )
