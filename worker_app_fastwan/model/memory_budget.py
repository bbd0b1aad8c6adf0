"""The GPU memory model of FastWan 2.2 TI2V-5B: how each offload profile places it, what a job needs.

`offload.py` chooses a profile and admits or refuses jobs with these numbers; they live apart so that the
model (its constants and their sources) can be checked and corrected in one place.

Units: GPU memory is in GiB (2**30 bytes) as torch reports it (`mem_get_info()` / `total_memory`), which is
less than the size on the box: a "24 GB" L4 reports ≈ 22 GiB, an RTX 4090 ≈ 23.6, an "80 GB" H100 ≈ 79.1.

## The budget model (conservative: it should refuse a job a little before the card would run out)

A job's peak is the larger of its two GPU phases, plus a reserve:
- denoising: the weights the profile keeps on the GPU then + activations, linear in the number of tokens
  `((num_frames - 1) // 4 + 1) · (height / 32) · (width / 32)` (VAE 16× spatial, 4× temporal, patch 2×2);
- decoding: the weights kept then + the VAE's working memory, which depends on how it decodes:
  streamed (per latent frame, as `pipelines/wan.py` does without tiling) it is linear in the frame *area*;
  tiled it is a fixed per-tile working set plus the whole decoded video, linear in pixel-frames.
Prompt encoding (≤ 512 tokens) does not depend on the job; `offload.describe()` warns when it cannot fit.
Host RAM is modelled too (`host_ram_gib`): what the weights need on the CPU side, at load and after.

The constants: weights from the published parameter counts (facts file), activations measured here on CPU
with diffusers 0.42.1's `WanTransformer3DModel` / `AutoencoderKLWan` at the checkpoint's real widths
(random weights; live tensor bytes tracked per op; 2 sizes each to get the slope), plus a margin for the CUDA
caching allocator. They were not measured on a GPU: when a GPU run shows other peaks, change them here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Profile = Literal["none", "balanced", "low_vram"]
VaeDtype = Literal["float32", "bfloat16"]
PROFILES: tuple[Profile, ...] = ("none", "balanced", "low_vram")  # fastest first: `auto` tries them in order
REQUESTABLE = ("auto", *PROFILES)
FASTVIDEO = "fastvideo"  # the fastvideo backend's placement: budgeted here, never chosen by `auto`

GIB = 2**30
KIB = 2**10

# Weights. Transformer ≈ 5.0 B params, bf16 (facts file: ≈ 10 GB). UMT5-XXL encoder ≈ 5.7 B params, bf16
# (11.4 GB): a 1.05 B-param token embedding (2.1 GB) and 24 blocks of 193 M params (0.39 GB each), counted
# here from its config. Streamed block by block (`balanced`) the GPU holds two blocks (the one running, the
# next prefetched); the embedding is looked up in host memory (`pipelines/text_encoder_offload.py`). The
# VAE, counted from the real config: encoder side 149.6 M params, always float32 (0.6 GB); decoder side
# 555.1 M params in VAE_DTYPE (1.1 GB bf16, 2.2 GB float32).
TRANSFORMER_BYTES = 10.0e9
TEXT_ENCODER_BYTES = 11.4e9
TEXT_ENCODER_BLOCK_BYTES = 0.386e9
STREAMED_BLOCKS_ON_GPU = 2
VAE_ENCODER_PARAMS = 149.6e6
VAE_DECODER_PARAMS = 555.1e6
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2}
# The fastvideo backend: FastVideo runs UMT5 in float32 (22.8 GB) and loads the VAE in float32; with its
# text-encoder CPU offload on (as the backend sets it) the whole encoder visits the GPU to encode a prompt.
FASTVIDEO_TEXT_ENCODER_BYTES = 22.8e9
FASTVIDEO_VAE_BYTES = (VAE_ENCODER_PARAMS + VAE_DECODER_PARAMS) * 4

# Transformer activations per token. Measured: 81 KiB/token for text-to-video (one scalar timestep) and
# 195 KiB/token for image-to-video, where every token has its own timestep and the blocks build
# (tokens, 6, 3072) fp32 modulation tensors (≈ 2 GB at 27,280 tokens, as the facts file says). The job's mode
# is not known here, so the larger, + 15 % for the allocator: 224 KiB. 1280×704×121 (27,280 tokens) ≈ 5.8 GiB.
ACT_BYTES_PER_TOKEN = 224 * KIB
# UMT5 activations for 512 prompt tokens: a few hundred MB at most.
TEXT_ENCODE_ACT_BYTES = 0.25 * GIB

# VAE decode, streamed per latent frame (no tiling): the causal-conv caches (7.2 KB per output pixel, kept
# across chunks) plus one 4-frame chunk in flight. Measured 21.6 KB per pixel of frame area in float32 at
# 64×96 and 128×192 (linear); + 11 %: 24,000 B. Independent of num_frames: frames are encoded as they come.
# 1280×704 ≈ 20 GiB in float32 (VAE_DTYPE=float32), ≈ 10 GiB in bfloat16 (the default).
VAE_STREAM_BYTES_PER_PIXEL_FP32 = 24_000
# VAE decode, tiled (diffusers' 256×256 tiles, stride 192): one tile's streamed working set
# (24,000 B × 65,536 px ≈ 1.46 GiB in float32) plus the whole video held several times over: every tile's
# output (1.78× for the overlap), the blended rows, their concatenation and the unpatchified copy, 3 values
# of 4 bytes per pixel-frame each: ≈ 57 B, rounded up to 60 B per pixel-frame in float32.
VAE_TILE_PIXELS = 256 * 256
VAE_TILED_BYTES_PER_PIXEL_FRAME_FP32 = 60

# Host RAM besides the weights: Python, torch, CUDA's host-side state, a job's frames and the encoder.
HOST_RUNTIME_BYTES = 4 * GIB

# CUDA context, cuBLAS/cuDNN workspaces and allocator fragmentation: a fixed part plus a share of the card.
RESERVE_FIXED_BYTES = 0.75 * GIB
RESERVE_SHARE = 0.03
# CUDNN_BENCHMARK=true: cuDNN times several algorithms for each new convolution shape and keeps the fastest,
# which may want a larger workspace than the one its heuristics pick (the reserve's share). PyTorch skips an
# algorithm whose workspace it cannot allocate, so the extra is bounded by what is free when a size is first
# seen; the decode phase counts this much of it. Not measured on a GPU (bench/gpu_checks.py measures the
# decode's peak both ways): change it when a GPU run shows another figure.
CUDNN_BENCHMARK_WORKSPACE_BYTES = 2 * GIB


@dataclass(frozen=True)
class OffloadPlan:
    """How the backend places the model. `text_encoder_off_gpu_after_encode`: the text encoder lives in CPU
    memory and comes to the GPU only to encode the prompt (`model_cpu_offload` implies as much for all three)."""

    model_cpu_offload: bool
    text_encoder_off_gpu_after_encode: bool
    vae_tiling: bool


PLANS: dict[str, OffloadPlan] = {
    "none": OffloadPlan(model_cpu_offload=False, text_encoder_off_gpu_after_encode=False, vae_tiling=False),
    "balanced": OffloadPlan(model_cpu_offload=False, text_encoder_off_gpu_after_encode=True, vae_tiling=True),
    "low_vram": OffloadPlan(model_cpu_offload=True, text_encoder_off_gpu_after_encode=True, vae_tiling=True),
    FASTVIDEO: OffloadPlan(model_cpu_offload=False, text_encoder_off_gpu_after_encode=True, vae_tiling=True),
}


def plan_for(profile: str) -> OffloadPlan:
    """The placement of one profile (`auto` must have been resolved by `choose_profile` first)."""
    try:
        return PLANS[profile]
    except KeyError:
        raise ValueError(f"OFFLOAD_PROFILE: must be one of {', '.join(PROFILES)} here (got {profile!r})") from None


@dataclass(frozen=True)
class MemoryEstimate:
    """GPU memory in GiB of each phase of one job under one profile, reserve not included."""

    encode_gib: float
    denoise_gib: float
    decode_gib: float

    @property
    def job_peak_gib(self) -> float:
        """The job-dependent peak: prompt encoding is the same for every job, see `describe()`."""
        return max(self.denoise_gib, self.decode_gib)


def tokens_for(width: int, height: int, num_frames: int) -> int:
    return ((num_frames - 1) // 4 + 1) * (height // 32) * (width // 32)


def reserve_gib(vram_total_gb: float) -> float:
    return (RESERVE_FIXED_BYTES + RESERVE_SHARE * vram_total_gb * GIB) / GIB


def _weights(profile: str, vae_dtype: str) -> tuple[float, float, float]:
    """Bytes of weights on the GPU while (encoding the prompt, denoising, decoding) under `profile`."""
    plan = plan_for(profile)
    transformer = TRANSFORMER_BYTES
    vae = _vae_bytes(vae_dtype)
    if profile == FASTVIDEO:
        resident = transformer + FASTVIDEO_VAE_BYTES
        return resident + FASTVIDEO_TEXT_ENCODER_BYTES, resident, resident
    if plan.model_cpu_offload:
        # One component per phase: the generator sends each back to the CPU at every phase boundary.
        return TEXT_ENCODER_BYTES, transformer, vae
    if plan.text_encoder_off_gpu_after_encode:
        streamed = STREAMED_BLOCKS_ON_GPU * TEXT_ENCODER_BLOCK_BYTES
        return transformer + vae + streamed, transformer + vae, transformer + vae
    everything = TEXT_ENCODER_BYTES + transformer + vae
    return everything, everything, everything


def estimate(
    width: int,
    height: int,
    num_frames: int,
    profile: str,
    *,
    vae_dtype: str = "bfloat16",
    cudnn_benchmark: bool = False,
) -> MemoryEstimate:
    """What the budget model says one job needs on the GPU under `profile` (see the module doc).

    `vae_dtype` is the decoder's (VAE_DTYPE); the `fastvideo` profile ignores it (FastVideo decodes in bf16).
    `cudnn_benchmark` (CUDNN_BENCHMARK) adds the autotuned convolutions' workspace to the decode.
    """
    plan = plan_for(profile)
    if profile == FASTVIDEO:
        vae_dtype = "bfloat16"
    scale = DTYPE_BYTES[vae_dtype] / 4  # VAE activations scale with its dtype; constants are float32
    encode_w, denoise_w, decode_w = _weights(profile, vae_dtype)
    pixels = width * height
    streamed = scale * VAE_STREAM_BYTES_PER_PIXEL_FP32 * pixels
    tiled = scale * (
        VAE_STREAM_BYTES_PER_PIXEL_FP32 * min(pixels, VAE_TILE_PIXELS)
        + VAE_TILED_BYTES_PER_PIXEL_FRAME_FP32 * pixels * num_frames
    )
    if profile == FASTVIDEO:
        vae_work = max(streamed, tiled)  # FastVideo's decode, tiled or not, was not measured: the larger
    elif plan.vae_tiling:
        vae_work = tiled
    else:
        vae_work = streamed
    if cudnn_benchmark:
        vae_work += CUDNN_BENCHMARK_WORKSPACE_BYTES
    return MemoryEstimate(
        encode_gib=(encode_w + TEXT_ENCODE_ACT_BYTES) / GIB,
        denoise_gib=(denoise_w + ACT_BYTES_PER_TOKEN * tokens_for(width, height, num_frames)) / GIB,
        decode_gib=(decode_w + vae_work) / GIB,
    )


def host_ram_at_load_gib(profile: str, *, vae_dtype: str = "bfloat16") -> float:
    """Host RAM one GPU process needs while it loads: every component is read into CPU memory before it is
    placed (≈ 23 GB with the diffusers backend, whatever the profile), plus the runtime. fastvideo: its
    float32 text encoder and the rest."""
    if profile == FASTVIDEO:
        weights = FASTVIDEO_TEXT_ENCODER_BYTES + TRANSFORMER_BYTES + FASTVIDEO_VAE_BYTES
    else:
        weights = TEXT_ENCODER_BYTES + TRANSFORMER_BYTES + _vae_bytes(vae_dtype)
    return (weights + HOST_RUNTIME_BYTES) / GIB


def host_ram_loaded_gib(profile: str, *, vae_dtype: str = "bfloat16") -> float:
    """Host RAM one GPU process keeps once loaded: `none` keeps no weights on the host; `balanced` the text
    encoder with a pinned (page-locked) copy of its blocks, both counted (the pageable copy of a block is
    only dropped once it has been streamed); `low_vram` everything; fastvideo its float32 text encoder
    (pinned) and, conservatively, the rest it read."""
    if profile == FASTVIDEO:
        return host_ram_at_load_gib(profile)
    pinned_blocks = 24 * TEXT_ENCODER_BLOCK_BYTES
    at_load = TEXT_ENCODER_BYTES + TRANSFORMER_BYTES + _vae_bytes(vae_dtype)
    after = {"none": 0.0, "balanced": TEXT_ENCODER_BYTES + pinned_blocks, "low_vram": at_load}
    return (after.get(profile, at_load) + HOST_RUNTIME_BYTES) / GIB


def host_ram_gib(profile: str, *, vae_dtype: str = "bfloat16") -> float:
    """Host RAM one GPU process needs at its worst moment (loading, or loaded): what a one-GPU box must have."""
    return max(host_ram_at_load_gib(profile, vae_dtype=vae_dtype), host_ram_loaded_gib(profile, vae_dtype=vae_dtype))


def _vae_bytes(vae_dtype: str) -> float:
    return VAE_ENCODER_PARAMS * 4 + VAE_DECODER_PARAMS * DTYPE_BYTES[vae_dtype]


def fits(
    width: int,
    height: int,
    num_frames: int,
    vram_total_gb: float,
    profile: str,
    vae_dtype: str,
    cudnn_benchmark: bool = False,
) -> bool:
    need = estimate(width, height, num_frames, profile, vae_dtype=vae_dtype, cudnn_benchmark=cudnn_benchmark)
    return need.job_peak_gib + reserve_gib(vram_total_gb) <= vram_total_gb
