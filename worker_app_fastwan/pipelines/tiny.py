"""The `tiny` backend: diffusers' real Wan 2.2 TI2V classes with tiny random weights, built in-process.

Same pipeline, scheduler, VAE round trip and image conditioning as production, on CPU in under a second
for the smallest job; what tests, CI and `make demo` run. Not a mock: only the sizes differ.

Test faults: a prompt containing `[tiny:oom]` raises the same `torch.OutOfMemoryError` CUDA raises, and
`[tiny:crash]` kills the GPU process, so the worker's recovery paths can be exercised without a GPU.
`[tiny:pace=S]` makes each denoising step last S seconds longer, as a GPU's step does: a test can act while
a job runs (cancel, drain, timeout, a kill) without keeping the CPU busy for as long.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from PIL import Image
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.schema import JobInput, Stage
from worker_app_fastwan.pipelines.base import Backend, Generation, ProgressCallback
from worker_app_fastwan.pipelines.wan import WanGenerator, WanParts

WEIGHTS_SEED = 0
OOM_TOKEN, CRASH_TOKEN = "[tiny:oom]", "[tiny:crash]"
CRASH_EXIT_CODE = 86
PACE = re.compile(r"\[tiny:pace=(\d{1,2}(?:\.\d{1,3})?)\]")  # at most 99.999 s a step


def _tokenizer() -> T5Tokenizer:
    # A Unigram vocabulary built in memory: letters and digits, no download. extra_ids=0, else 100
    # sentinel tokens are added and the ids outgrow the encoder's vocabulary.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -0.5)]
    pieces += [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_tiny_parts() -> WanParts:
    """Deterministic tiny weights (same every time), the published configs scaled down."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHTS_SEED)
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
        )
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=48,
            out_channels=48,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=64,  # 64 > 1280 / 32 patches
        )
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=64,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=16,
                feed_forward_proj="gated-gelu",
            )
        )
    parts = WanParts(tokenizer=_tokenizer(), text_encoder=text_encoder, transformer=transformer, vae=vae)
    for module in (parts.text_encoder, parts.transformer, parts.vae):
        module.eval()
    return parts


def save_tiny_model(folder: Path) -> Path:
    """Write the tiny model in the diffusers folder layout, so the real loading code can be tested."""
    from worker_app_fastwan.pipelines.dmd import make_scheduler

    parts = build_tiny_parts()
    parts.transformer.save_pretrained(folder / "transformer")
    parts.vae.save_pretrained(folder / "vae")
    parts.text_encoder.save_pretrained(folder / "text_encoder")
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    make_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text('{"_class_name": "WanPipeline", "_diffusers_version": "0.42.1"}\n')
    return folder


class TinyBackend(Backend):
    name = "tiny"

    def __init__(self) -> None:
        self.generator: WanGenerator | None = None

    def load(self) -> None:
        self.generator = WanGenerator(build_tiny_parts(), torch.device("cpu"))

    def generate(self, job: JobInput, image: Image.Image | None, progress: ProgressCallback) -> Generation:
        assert self.generator is not None, "load() first"
        if OOM_TOKEN in job.prompt:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated by [tiny:oom])")
        if CRASH_TOKEN in job.prompt:
            os._exit(CRASH_EXIT_CODE)
        if pace := PACE.search(job.prompt):
            progress = _paced(progress, float(pace.group(1)))
        return self.generator.generate(job, image, progress)

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(backend=self.name, model="tiny-random-wan2.2-ti2v", device="cpu", name="cpu")


def _paced(progress: ProgressCallback, step_s: float) -> ProgressCallback:
    """Each denoising step ends `step_s` later; the progress report (and its cancel check) comes after the wait."""

    def report(stage: str, step: int | None, total: int | None) -> None:
        if stage == Stage.denoising.value and step:
            time.sleep(step_s)
        progress(stage, step, total)

    return report
