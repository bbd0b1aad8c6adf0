"""The `tiny` backend: the miniature FastWan trained here (worker_app_fastwan/miniature), on the CPU.

The same diffusers Wan 2.2 TI2V classes as production, narrower, with weights trained on a synthetic world
(one coloured square or circle on a dark background, moving as the prompt says: `a red square moving
left`; docs/miniature.md). Loaded by the production loader and sampled by the production path, so its
videos show whether that path still makes what the prompt asks for. What tests, CI and `make demo` run.

Test faults: a prompt containing `[tiny:oom]` raises the same `torch.OutOfMemoryError` CUDA raises, and
`[tiny:crash]` kills the GPU process, so the worker's recovery paths can be exercised without a GPU.
`[tiny:pace=S]` makes each denoising step last S seconds longer, as a GPU's step does: a test can act while
a job runs (cancel, drain, timeout, a kill) without keeping the CPU busy for as long.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import torch
from PIL import Image

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.schema import JobInput, Stage
from worker_app_fastwan.pipelines.base import Backend, Generation, ProgressCallback
from worker_app_fastwan.pipelines.diffusers_backend import Precision, load_parts
from worker_app_fastwan.pipelines.wan import WanGenerator, WanParts

# The shipped weights. A folder, not an import: the miniature package (its world, measurements and training)
# sits above the pipelines and is only for tests, benchmarks and the training script.
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "miniature" / "weights"
MODEL_NAME = "fastwan-miniature"
OOM_TOKEN, CRASH_TOKEN = "[tiny:oom]", "[tiny:crash]"
CRASH_EXIT_CODE = 86
PACE = re.compile(r"\[tiny:pace=(\d{1,2}(?:\.\d{1,3})?)\]")  # at most 99.999 s a step


def load_miniature(folder: Path = WEIGHTS_DIR) -> WanParts:
    """The miniature's weights through the production loader, float32 on the CPU."""
    f32 = torch.float32
    return load_parts(folder, Precision(f32, f32, f32, f32))


def save_tiny_model(folder: Path) -> Path:
    """A copy of the shipped folder, for tests of the loading code on a folder of their own."""
    shutil.copytree(WEIGHTS_DIR, folder)
    return folder


class TinyBackend(Backend):
    name = "tiny"

    def __init__(self) -> None:
        self.generator: WanGenerator | None = None

    def load(self) -> None:
        self.generator = WanGenerator(load_miniature(), torch.device("cpu"))

    def warmup(self) -> None:
        """One small job (the world's smallest size, one step): every test worker starts with it, and the path
        is the same at any size."""
        job = JobInput(prompt="warm-up", width=128, height=128, num_frames=5, num_inference_steps=1, seed=0)
        for _ in self.generate(job, None, lambda *_: None).frames:
            pass

    def generate(self, job: JobInput, image: Image.Image | None, progress: ProgressCallback) -> Generation:
        assert self.generator is not None, "load() first"
        if OOM_TOKEN in job.prompt:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated by [tiny:oom])")
        if CRASH_TOKEN in job.prompt:
            os._exit(CRASH_EXIT_CODE)
        if pace := PACE.search(job.prompt):
            progress = _paced(progress, float(pace.group(1)))
            # The token is an instruction to this backend, not part of what the model is asked to draw: a
            # paced job makes the video its prompt without the token makes (the tests judge what it shows).
            job = job.model_copy(update={"prompt": PACE.sub("", job.prompt).strip()})
        return self.generator.generate(job, image, progress)

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(backend=self.name, model=MODEL_NAME, device="cpu", name="cpu")


def _paced(progress: ProgressCallback, step_s: float) -> ProgressCallback:
    """Each denoising step ends `step_s` later; the progress report (and its cancel check) comes after the wait."""

    def report(stage: str, step: int | None, total: int | None) -> None:
        if stage == Stage.denoising.value and step:
            time.sleep(step_s)
        progress(stage, step, total)

    return report
