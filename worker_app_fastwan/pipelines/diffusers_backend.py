"""The `diffusers` backend (production): the FastWan 2.2 TI2V-5B checkpoint in diffusers format.

Loaded component by component: the checkpoint's model_index.json names FastVideo's `WanDMDPipeline`,
which `DiffusionPipeline.from_pretrained` does not know, and the scheduler is always our DMD one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from PIL import Image
from transformers import AutoTokenizer, UMT5EncoderModel

from worker_app_fastwan.messages import DeviceInfo
from worker_app_fastwan.pipelines.base import Backend, Generation, ProgressCallback, torch_device_info
from worker_app_fastwan.pipelines.wan import WanGenerator, WanParts
from worker_app_fastwan.schema import JobInput

log = logging.getLogger(__name__)

# Tried in order; diffusers' native SDPA (PyTorch's flash kernel on Hopper) is the fallback.
ATTENTION_BACKENDS = ("_flash_3", "flash")


def load_parts(source: str | Path, dtype: torch.dtype, vae_dtype: torch.dtype) -> WanParts:
    """The four components from a diffusers-format folder (the real loading code, also run on the tiny model)."""
    return WanParts(
        tokenizer=AutoTokenizer.from_pretrained(source, subfolder="tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype).eval(),
        transformer=WanTransformer3DModel.from_pretrained(source, subfolder="transformer", torch_dtype=dtype).eval(),
        vae=AutoencoderKLWan.from_pretrained(source, subfolder="vae", torch_dtype=vae_dtype).eval(),
    )


def stream_text_encoder(text_encoder: torch.nn.Module, device: torch.device) -> None:
    """Keep the 11 GB UMT5 in CPU memory and stream its blocks through the GPU one at a time.

    Moving it whole to the GPU for each prompt would need transformer + VAE + text encoder at once
    (≈ 23 GiB: too much for 24 GB cards); block by block it needs one block (≈ 0.4 GB) at a time. The
    hook goes on the encoder stack, whose `block` list diffusers' block-level offloading can see.
    """
    from diffusers.hooks import apply_group_offloading

    cuda = device.type == "cuda"
    apply_group_offloading(
        text_encoder.encoder,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=cuda,
        non_blocking=cuda,
    )


def tune_for_cuda(transformer: torch.nn.Module, *, compile_transformer: bool) -> str:
    """The CUDA speed settings of the project's path; returns the attention backend in use.

    `bench/gpu_bench.py` calls this too, so what it times is what a worker runs.
    """
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    chosen = "native"
    for backend in ATTENTION_BACKENDS:
        try:
            transformer.set_attention_backend(backend)
            chosen = backend
            break
        except Exception as exc:  # noqa: BLE001 - an optional kernel that is missing is not an error
            log.info("attention backend unavailable", extra={"backend": backend, "why": str(exc)[:200]})
    log.info("attention backend", extra={"backend": chosen})
    if compile_transformer:
        transformer.compile(fullgraph=False, dynamic=False)
    return chosen


class DiffusersBackend(Backend):
    name = "diffusers"

    def __init__(
        self,
        source: str | Path,
        model_name: str,
        *,
        offload_profile: str = "auto",
        compile_transformer: bool = False,
        vae_dtype: str = "float32",
    ) -> None:
        self.source, self.model_name = source, model_name
        self.requested_profile = offload_profile
        self.compile_transformer = compile_transformer
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.vae_dtype = getattr(torch, vae_dtype) if self.cuda else torch.float32
        self.profile = "none"
        self.generator: WanGenerator | None = None

    def load(self) -> None:
        from worker_app_fastwan.offload import choose_profile, describe, plan_for

        parts = load_parts(self.source, self.dtype, self.vae_dtype)
        vram, vae_dtype = self.vram_total_gb(), str(self.vae_dtype).removeprefix("torch.")
        self.profile = choose_profile(self.requested_profile, vram, vae_dtype=vae_dtype)
        plan = plan_for(self.profile)
        log.info(
            "offload profile", extra={"profile": self.profile, "why": describe(self.profile, vram, vae_dtype=vae_dtype)}
        )
        self.generator = WanGenerator(parts, self.device)
        self._place(parts, plan)
        if self.cuda:
            tune_for_cuda(parts.transformer, compile_transformer=self.compile_transformer)

    def _place(self, parts: WanParts, plan) -> None:
        assert self.generator is not None
        if plan.vae_tiling:
            parts.vae.enable_tiling()
        if plan.model_cpu_offload and self.cuda:
            self.generator.t2v.enable_model_cpu_offload(device=self.device)
            return
        parts.transformer.to(self.device)
        parts.vae.to(self.device)
        if plan.text_encoder_off_gpu_after_encode:
            stream_text_encoder(parts.text_encoder, self.device)
        else:
            parts.text_encoder.to(self.device)

    def generate(self, job: JobInput, image: Image.Image | None, progress: ProgressCallback) -> Generation:
        assert self.generator is not None, "load() first"
        return self.generator.generate(job, image, progress)

    def vram_total_gb(self) -> float | None:
        return torch.cuda.get_device_properties(0).total_memory / 2**30 if self.cuda else None

    def device_info(self) -> DeviceInfo:
        return torch_device_info(self.name, self.model_name, offload_profile=self.profile)

    def free_memory(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
