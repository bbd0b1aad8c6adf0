"""The small interface every generation backend implements (tiny, diffusers, fastvideo)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from worker_app_fastwan.messages import DeviceInfo
from worker_app_fastwan.schema import JobInput

# (stage, step, total_steps): called at every stage change and after every denoising step; it may raise
# JobFailure(cancelled) to stop the job at that safe point.
ProgressCallback = Callable[[str, "int | None", "int | None"], None]


@dataclass
class Generation:
    """A generated video: `frames` yields uint8 (n, H, W, 3) chunks as they are decoded, lazily."""

    seed: int
    num_frames: int
    frames: Iterator[np.ndarray]


def torch_device_info(
    backend: str, model: str, *, supports_i2v: bool = True, offload_profile: str = "none"
) -> DeviceInfo:
    """The current CUDA device and its memory in use, or the CPU."""
    import torch

    if not torch.cuda.is_available():
        return DeviceInfo(backend=backend, model=model, supports_i2v=supports_i2v, offload_profile=offload_profile)
    free, total = torch.cuda.mem_get_info()
    return DeviceInfo(
        backend=backend,
        model=model,
        device="cuda:0",
        name=torch.cuda.get_device_name(0),
        memory_used_mb=(total - free) // 2**20,
        memory_total_mb=total // 2**20,
        supports_i2v=supports_i2v,
        offload_profile=offload_profile,
    )


class Backend(abc.ABC):
    name: str = "base"
    supports_i2v: bool = True

    @abc.abstractmethod
    def load(self) -> None:
        """Load the weights once (blocking; seconds to minutes)."""

    def warmup(self) -> None:
        """Run one small job so the first real job does not pay for lazy initialisation."""
        job = JobInput(prompt="warm-up", width=256, height=256, num_frames=5, num_inference_steps=1, seed=0)
        for _ in self.generate(job, None, lambda *_: None).frames:
            pass

    @abc.abstractmethod
    def generate(self, job: JobInput, image: Image.Image | None, progress: ProgressCallback) -> Generation:
        """Denoise now; decode lazily through `Generation.frames`."""

    @abc.abstractmethod
    def device_info(self) -> DeviceInfo:
        """Device name and memory, for /health and heartbeats."""

    def free_memory(self) -> None:
        """Release cached allocations after a failure (an OOM) so the next job can run."""

    def close(self) -> None:
        """Release processes or memory the backend holds."""
