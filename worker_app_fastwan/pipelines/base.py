"""The small interface every generation backend implements (tiny, diffusers, fastvideo)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.schema import MIN_FRAMES, JobInput

DEFAULT_SIZE = (1280, 704, 121)  # width, height, num_frames of a job that names none (schema defaults)
SMALL_SIZE = (256, 256, 5)

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


@dataclass(frozen=True)
class WarmupItem:
    """One warm-up run: `decode` False runs the denoiser only (all torch.compile touches)."""

    job: JobInput
    image: Image.Image | None
    decode: bool


# (width, height, num_frames) -> whether the worker's admission check (`check_job_fits`) takes a job that size.
Admits = Callable[[int, int, int], bool]


def warmup_plan(
    *,
    compiled: bool,
    i2v: bool,
    admits: Admits = lambda *_: True,
    tune_decode: bool = False,
    default: tuple[int, int, int] = DEFAULT_SIZE,
    small: tuple[int, int, int] = SMALL_SIZE,
) -> list[WarmupItem]:
    """What start-up runs before the first job, so that no paying job pays for lazy initialisation.

    Only sizes the card admits (`admits`, the check every job passes): a warm-up the budget refuses could
    run the card out of memory and keep the model from ever loading.

    Always one small text-to-video job end to end. With a compiled transformer, also each enabled mode
    (text-to-video has a 1-D timestep, image-to-video a 2-D one: separate graphs) at the large size and
    at the small size: the second size makes PyTorch compile the dynamic graph that serves every later
    size, so jobs do not recompile. The large size is the default one, or where the card refuses that, the
    most frames it admits at the default width and height. One step each: every step runs the same graph.
    `tune_decode` (CUDNN_BENCHMARK): the large size is also decoded, so that the convolutions of the size
    most jobs use are autotuned at start-up rather than in the first job of that size.
    """

    def job(size: tuple[int, int, int]) -> JobInput:
        width, height, frames = size
        return JobInput(prompt="warm-up", width=width, height=height, num_frames=frames, num_inference_steps=1, seed=0)

    large = largest_admitted(default, admits)
    sizes = [size for size in (large, small) if size is not None and admits(*size)]
    sizes = list(dict.fromkeys(sizes))  # the large size may be the small one
    plan = []
    if compiled:
        for image in [None, warmup_image()] if i2v else [None]:
            plan += [WarmupItem(job(size), image, False) for size in sizes]
    if tune_decode and large is not None and large != small:
        plan.append(WarmupItem(job(large), None, True))
    if admits(*small):
        plan.append(WarmupItem(job(small), None, True))
    return plan


def largest_admitted(default: tuple[int, int, int], admits: Admits) -> tuple[int, int, int] | None:
    """`default` if admitted, else the most frames (4k+1) admitted at its width and height, else None."""
    width, height, frames = default
    while frames >= MIN_FRAMES:
        if admits(width, height, frames):
            return (width, height, frames)
        frames -= 4
    return None


def warmup_image() -> Image.Image:
    """A smooth gradient: a plausible picture for the image-to-video warm-up, no file needed."""
    ramp = np.linspace(0, 255, 256, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (256, 1)), np.tile(ramp[:, None], (1, 256)), np.full((256, 256), 128, np.uint8)])
    return Image.fromarray(pixels.transpose(1, 2, 0), "RGB")


class Backend(abc.ABC):
    name: str = "base"
    supports_i2v: bool = True

    @abc.abstractmethod
    def load(self) -> None:
        """Load the weights once (blocking; seconds to minutes)."""

    def warmup(self) -> None:
        """Run one small job so the first real job does not pay for lazy initialisation."""
        for item in warmup_plan(compiled=False, i2v=False):
            for _ in self.generate(item.job, item.image, lambda *_: None).frames:
                pass

    @abc.abstractmethod
    def generate(self, job: JobInput, image: Image.Image | None, progress: ProgressCallback) -> Generation:
        """Denoise now; decode lazily through `Generation.frames`."""

    @abc.abstractmethod
    def device_info(self) -> DeviceInfo:
        """Device name and memory, for /health and heartbeats."""

    def free_memory(self) -> None:  # noqa: B027 - an optional hook: most backends hold nothing to free
        """After any failed job (cancelled, timed out, out of memory): release what it may have left on the GPU
        (offloaded components, cached allocations) so that the next job starts from the budgeted state."""

    def close(self) -> None:  # noqa: B027 - an optional hook: most backends hold nothing to release
        """Release processes or memory the backend holds."""
