"""The `diffusers` backend (production): the FastWan 2.2 TI2V-5B checkpoint in diffusers format.

Loaded component by component: the checkpoint's model_index.json names FastVideo's `WanDMDPipeline`,
which `DiffusionPipeline.from_pretrained` does not know, and the scheduler is always our DMD one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from PIL import Image
from transformers import AutoTokenizer, UMT5EncoderModel
from transformers.utils import logging as transformers_logging

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.schema import JobInput
from worker_app_fastwan.model.memory_budget import OffloadPlan
from worker_app_fastwan.pipelines.base import (
    Backend,
    Generation,
    ProgressCallback,
    WarmupItem,
    torch_device_info,
    warmup_plan,
)
from worker_app_fastwan.pipelines.text_encoder_offload import stream_text_encoder
from worker_app_fastwan.pipelines.tuning import RecompileWatch, tune_for_cuda
from worker_app_fastwan.pipelines.wan import WanGenerator, WanParts

log = logging.getLogger(__name__)

__all__ = ["DiffusersBackend", "Precision", "load_parts", "precision_for", "stream_text_encoder", "tune_for_cuda"]


@dataclass(frozen=True)
class Precision:
    """The dtype of each component. The VAE is split: FastVideo encodes in float32 (bf16 encoding hurts
    image-to-video) and decodes in bfloat16 (MS-SSIM 0.9999 against float32, half the decoder's memory)."""

    transformer: torch.dtype
    text_encoder: torch.dtype
    vae_encoder: torch.dtype
    vae_decoder: torch.dtype


def precision_for(cuda: bool, vae_decode_dtype: str = "bfloat16") -> Precision:
    """bf16 on CUDA with the float32 VAE encoder; float32 everywhere on the CPU (no fast bf16 kernels)."""
    if not cuda:
        return Precision(torch.float32, torch.float32, torch.float32, torch.float32)
    return Precision(torch.bfloat16, torch.bfloat16, torch.float32, getattr(torch, vae_decode_dtype))


def set_vae_precision(vae: torch.nn.Module, encoder: torch.dtype, decoder: torch.dtype) -> None:
    """Encoder side (`encoder`, `quant_conv`) in one dtype, decoder side (`post_quant_conv`, `decoder`) in another.

    `vae.dtype` (what diffusers casts an image to before encoding) is its first parameter's, the encoder's.
    """
    vae.to(encoder)
    vae.post_quant_conv.to(decoder)
    vae.decoder.to(decoder)


def load_parts(source: str | Path, precision: Precision) -> WanParts:
    """The four components from a diffusers-format folder (the real loading code, also run on the tiny model)."""
    # transformers draws a "Loading weights" bar on stderr, which is JSON lines when the CLI is piped and has a
    # display of its own in a terminal: the process that loads is the GPU child, where no bar belongs.
    transformers_logging.disable_progress_bar()
    vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", torch_dtype=precision.vae_encoder).eval()
    set_vae_precision(vae, precision.vae_encoder, precision.vae_decoder)
    return WanParts(
        tokenizer=AutoTokenizer.from_pretrained(source, subfolder="tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(
            source, subfolder="text_encoder", dtype=precision.text_encoder
        ).eval(),
        transformer=WanTransformer3DModel.from_pretrained(
            source, subfolder="transformer", torch_dtype=precision.transformer
        ).eval(),
        vae=vae,
    )


class DiffusersBackend(Backend):
    name = "diffusers"

    def __init__(
        self,
        source: str | Path,
        model_name: str,
        *,
        offload_profile: str = "auto",
        compile_transformer: bool = False,
        vae_dtype: str = "bfloat16",
        i2v_enabled: bool = True,
        cudnn_benchmark: bool = False,
        device: torch.device | None = None,
        precision: Precision | None = None,
    ) -> None:
        """`device` / `precision` default to CUDA's bf16 set-up when CUDA is there (tests pass them on CPU)."""
        self.source, self.model_name = source, model_name
        self.requested_profile = offload_profile
        self.compile_transformer = compile_transformer
        self.i2v_enabled = i2v_enabled
        self.cudnn_benchmark = cudnn_benchmark
        self.cuda = torch.cuda.is_available()
        self.device = device or torch.device("cuda" if self.cuda else "cpu")
        self.precision = precision or precision_for(self.cuda, vae_dtype)
        self.profile = "none"
        self.generator: WanGenerator | None = None
        self.attention = "native"
        self.recompiles: RecompileWatch | None = None

    @property
    def vae_decode_dtype(self) -> str:
        return str(self.precision.vae_decoder).removeprefix("torch.")

    def load(self) -> None:
        from worker_app_fastwan.model.memory_budget import plan_for
        from worker_app_fastwan.model.offload import choose_profile, describe

        parts = load_parts(self.source, self.precision)
        vram = self.vram_total_gb()
        vae_dtype, cudnn_benchmark = self.vae_decode_dtype, self.cudnn_benchmark
        self.profile = choose_profile(
            self.requested_profile, vram, vae_dtype=vae_dtype, cudnn_benchmark=cudnn_benchmark
        )
        why = describe(self.profile, vram, vae_dtype=vae_dtype, cudnn_benchmark=cudnn_benchmark)
        log.info("offload profile", extra={"profile": self.profile, "why": why})
        self.generator = WanGenerator(parts, self.device)
        self._place(parts, plan_for(self.profile))
        if self.cuda:
            self.attention = tune_for_cuda(
                parts.transformer, compile_transformer=self.compile_transformer, cudnn_benchmark=self.cudnn_benchmark
            )
            self.generator.release_offloaded()  # the probe brought the transformer over under low_vram

    def _place(self, parts: WanParts, plan: OffloadPlan) -> None:
        assert self.generator is not None
        if plan.vae_tiling:
            parts.vae.enable_tiling()
        if plan.model_cpu_offload:
            self.generator.t2v.enable_model_cpu_offload(device=self.device)
            return
        parts.transformer.to(self.device)
        parts.vae.to(self.device)
        if plan.text_encoder_off_gpu_after_encode:
            stream_text_encoder(parts.text_encoder, self.device)
        else:
            parts.text_encoder.to(self.device)

    def warmup_items(self) -> list[WarmupItem]:
        """The small job; compiled, also both modes at a large size and the small one; with CUDNN_BENCHMARK,
        the large size decoded: only sizes this card admits under its profile (see `warmup_plan`)."""
        from worker_app_fastwan.model.offload import admission

        vram = self.admission_vram_gib()
        admits = admission(vram, self.profile, vae_dtype=self.vae_decode_dtype, cudnn_benchmark=self.cudnn_benchmark)
        return warmup_plan(
            compiled=self.compile_transformer and self.cuda,
            i2v=self.i2v_enabled,
            admits=admits,
            tune_decode=self.cudnn_benchmark and self.cuda,
        )

    def warmup(self) -> None:
        assert self.generator is not None, "load() first"
        compiled = self.compile_transformer and self.cuda
        for item in self.warmup_items():
            if item.decode:
                for _ in self.generator.generate(item.job, item.image, lambda *_: None).frames:
                    pass
            else:
                self.generator.denoise(item.job, item.image, lambda *_: None)
        if compiled:
            self.recompiles = RecompileWatch()

    def generate(self, job: JobInput, image: Image.Image | None, progress: ProgressCallback) -> Generation:
        assert self.generator is not None, "load() first"
        generation = self.generator.generate(job, image, progress)
        if self.recompiles is not None:
            mode = "i2v" if image is not None else "t2v"
            self.recompiles.check(f"{job.width}×{job.height}×{job.num_frames} {mode}")
        return generation

    def vram_total_gb(self) -> float | None:
        return torch.cuda.get_device_properties(0).total_memory / 2**30 if self.cuda else None

    def admission_vram_gib(self) -> float | None:
        """The card's memory as the parent's admission check sees it (whole MiB of `device_info()`)."""
        return self.device_info().memory_total_mb / 1024 if self.cuda else None

    def device_info(self) -> DeviceInfo:
        return torch_device_info(self.name, self.model_name, offload_profile=self.profile)

    def free_memory(self) -> None:
        """After a failed job: every offloaded component back to the CPU (a failure can leave one on the GPU,
        past the generator's own `finally`: a decode abandoned half-way), then the cached blocks freed."""
        if self.generator is not None:
            self.generator.release_offloaded()
        if self.cuda:
            torch.cuda.empty_cache()
