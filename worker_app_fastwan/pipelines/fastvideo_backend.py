"""The `fastvideo` backend: an adapter over FastVideo's `VideoGenerator` (optional extra `[fastvideo]`).

Known limits, from FastVideo's source (0.2.x) for this checkpoint:
- its DMD pipeline ignores an input image, so image-to-video jobs are refused here with `invalid_input`
  (run them on the `diffusers` backend);
- it has no per-step callback, so progress jumps from denoising 0 to done;
- it spawns worker processes, so `close()` calls `shutdown()`;
- it defaults every CPU-offload flag to on, layer-wise streaming of the transformer from host memory at
  every step included (`dit_layerwise_offload`, which also overrides `dit_cpu_offload`); here the
  transformer and VAE stay on the GPU and only the text encoder (UMT5 in float32 there: ≈ 22.8 GB) is kept
  in pinned CPU memory between prompts (`load_kwargs()`); the memory model's `fastvideo` profile budgets
  exactly that;
- it always runs the 3 DMD steps [1000, 757, 522] whatever `num_inference_steps` says, so a job asking
  for fewer is refused rather than reported as something it did not run;
- it picks its model config by the model name (an exact key of its registry, else the last path
  component), so it is given `MODEL_ID`, or a `MODEL_PATH` folder named like one: a hub-cache snapshot
  folder is named by a commit hash and would make FastVideo fall back to FastWan 2.1's config.
Not exercised in CI (FastVideo pins its own torch); the Docker image installs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.errors import JobFailure, ModelUnavailable
from worker_app_fastwan.core.schema import MAX_STEPS, ErrorCode, JobInput, Stage
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.pipelines.base import Backend, Generation, ProgressCallback, torch_device_info

# FastVideo's model registry (registry.py, 0.2.x): both names map to its FastWan2.2 TI2V-5B config.
FASTVIDEO_MODEL_IDS = ("FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers", "FastVideo/FastWan2.2-TI2V-5B-Diffusers")


def fastvideo_model(settings: Settings) -> str:
    """What to hand FastVideo so that it picks the FastWan2.2 TI2V-5B config.

    MODEL_ID itself (FastVideo finds or downloads it in the hub cache), or MODEL_PATH when its folder is
    named like a registry entry; any other folder (a baked `/opt/fastwan-model`) is reached through a
    link named after MODEL_ID in STATE_DIR, because FastVideo matches the last path component.
    """
    if settings.MODEL_ID not in FASTVIDEO_MODEL_IDS:
        raise ModelUnavailable(
            f"MODEL_ID: the fastvideo backend needs a name from FastVideo's model registry "
            f"({' or '.join(FASTVIDEO_MODEL_IDS)}), got {settings.MODEL_ID!r}"
        )
    if settings.MODEL_PATH is None:
        return settings.MODEL_ID
    folder = Path(settings.MODEL_PATH).expanduser().resolve()
    known = {name.rsplit("/", 1)[1] for name in FASTVIDEO_MODEL_IDS}
    if folder.name in known:
        return str(folder)
    link = settings.STATE_DIR / "fastvideo-model" / settings.MODEL_ID.rsplit("/", 1)[1]
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() != folder:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(folder, target_is_directory=True)
    return str(link)


def load_kwargs() -> dict[str, object]:
    """`VideoGenerator.from_pretrained` options: FastVideo 0.2.1's names (its `from_pretrained` convenience
    keywords); a name it does not know would be dropped into its "experimental" bag without a word.

    The transformer and VAE stay on the GPU: neither offloaded nor streamed layer by layer (FastVideo's
    default, which copies the 10 GB transformer over PCIe at every step). The float32 text encoder stays in
    host memory, pinned, so that its visits to the GPU are fast asynchronous copies.
    """
    return {
        "num_gpus": 1,
        "dit_cpu_offload": False,
        "dit_layerwise_offload": False,
        "vae_cpu_offload": False,
        "text_encoder_cpu_offload": True,
        "pin_cpu_memory": True,
    }


class FastVideoBackend(Backend):
    name = "fastvideo"
    supports_i2v = False

    def __init__(self, source: str | Path, model_name: str) -> None:
        self.source, self.model_name = str(source), model_name
        self.generator = None

    def load(self) -> None:
        from fastvideo import VideoGenerator  # optional dependency

        self.generator = VideoGenerator.from_pretrained(self.source, **load_kwargs())

    def warmup(self) -> None:
        """The small warm-up job, at the 3 steps FastVideo always runs (it refuses any other count)."""
        job = JobInput(prompt="warm-up", width=256, height=256, num_frames=5, num_inference_steps=MAX_STEPS, seed=0)
        for _ in self.generate(job, None, lambda *_: None).frames:
            pass

    def generate(self, job: JobInput, image: Image.Image | None, progress: ProgressCallback) -> Generation:
        if image is not None:
            raise JobFailure(
                ErrorCode.invalid_input,
                "image_url: the fastvideo backend cannot do image-to-video "
                "with this checkpoint (it ignores the image); use PIPELINE_BACKEND=diffusers",
            )
        if job.num_inference_steps != MAX_STEPS:
            raise JobFailure(
                ErrorCode.invalid_input,
                f"num_inference_steps: the fastvideo backend always runs FastWan's {MAX_STEPS} DMD steps "
                f"(got {job.num_inference_steps}); ask for {MAX_STEPS} or use PIPELINE_BACKEND=diffusers",
            )
        progress(Stage.denoising.value, 0, MAX_STEPS)
        result = self.generator.generate_video(
            job.prompt,
            height=job.height,
            width=job.width,
            num_frames=job.num_frames,
            fps=job.fps,
            seed=job.seed,
            save_video=False,
            return_frames=True,
        )
        progress(Stage.denoising.value, MAX_STEPS, MAX_STEPS)
        frames = np.stack([np.asarray(f, dtype=np.uint8) for f in _frames_of(result)])
        return Generation(seed=job.seed or 0, num_frames=len(frames), frames=iter([frames]))

    def device_info(self) -> DeviceInfo:
        return torch_device_info(self.name, self.model_name, supports_i2v=False, offload_profile="fastvideo")

    def close(self) -> None:
        if self.generator is not None:
            self.generator.shutdown()


def _frames_of(result: object) -> list:
    """FastVideo has returned frames as a dict entry or as the list itself, depending on version."""
    if isinstance(result, dict):
        return list(result["frames"])
    return list(result)
