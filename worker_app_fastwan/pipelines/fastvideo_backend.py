"""The `fastvideo` backend: an adapter over FastVideo's `VideoGenerator` (optional extra `[fastvideo]`).

Known limits, from FastVideo's source (0.2.x) for this checkpoint:
- its DMD pipeline ignores an input image, so image-to-video jobs are refused here with `invalid_input`
  (run them on the `diffusers` backend);
- it has no per-step callback, so progress jumps from denoising 0 to done;
- it spawns worker processes, so `close()` calls `shutdown()`;
- it defaults every CPU-offload flag to on; they are turned off here (one GPU, one model).
Not exercised in CI (FastVideo pins its own torch); the Docker image installs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from worker_app_fastwan.errors import JobFailure
from worker_app_fastwan.messages import DeviceInfo
from worker_app_fastwan.pipelines.base import Backend, Generation, ProgressCallback, torch_device_info
from worker_app_fastwan.schema import ErrorCode, JobInput, Stage


class FastVideoBackend(Backend):
    name = "fastvideo"
    supports_i2v = False

    def __init__(self, source: str | Path, model_name: str) -> None:
        self.source, self.model_name = str(source), model_name
        self.generator = None

    def load(self) -> None:
        from fastvideo import VideoGenerator  # optional dependency

        self.generator = VideoGenerator.from_pretrained(
            self.source,
            num_gpus=1,
            dit_cpu_offload=False,
            vae_cpu_offload=False,
            text_encoder_cpu_offload=False,
            pin_cpu_memory=False,
        )

    def generate(self, job: JobInput, image: Image.Image | None, progress: ProgressCallback) -> Generation:
        if image is not None:
            raise JobFailure(
                ErrorCode.invalid_input,
                "image_url: the fastvideo backend cannot do image-to-video "
                "with this checkpoint (it ignores the image); use PIPELINE_BACKEND=diffusers",
            )
        progress(Stage.denoising.value, 0, job.num_inference_steps)
        result = self.generator.generate_video(  # type: ignore[union-attr]
            job.prompt,
            height=job.height,
            width=job.width,
            num_frames=job.num_frames,
            fps=job.fps,
            seed=job.seed,
            num_inference_steps=job.num_inference_steps,
            save_video=False,
            return_frames=True,
        )
        progress(Stage.denoising.value, job.num_inference_steps, job.num_inference_steps)
        frames = np.stack([np.asarray(f, dtype=np.uint8) for f in _frames_of(result)])
        return Generation(seed=job.seed or 0, num_frames=len(frames), frames=iter([frames]))

    def device_info(self) -> DeviceInfo:
        return torch_device_info(self.name, self.model_name, supports_i2v=False)

    def close(self) -> None:
        if self.generator is not None:
            self.generator.shutdown()


def _frames_of(result: object) -> list:
    """FastVideo has returned frames as a dict entry or as the list itself, depending on version."""
    if isinstance(result, dict):
        return list(result["frames"])
    return list(result)  # type: ignore[arg-type]
