"""Fit FastWan 2.2 TI2V-5B to the card: pick an offload profile, refuse jobs the card cannot hold.

Profiles (`OFFLOAD_PROFILE`; `auto` picks one from the card's memory):

| profile    | what stays on the GPU                                   | VAE decode                 |
|------------|---------------------------------------------------------|----------------------------|
| `none`     | everything (text encoder, transformer, VAE)             | streamed per latent frame  |
| `balanced` | transformer + VAE; the text encoder streamed block-wise | tiled                      |
| `low_vram` | one component at a time (model CPU offload)             | tiled                      |
| `fastvideo`| the `fastvideo` backend's own placement (not requestable) | FastVideo's                |

`auto` takes the fastest profile under which the default job (1280×704, 121 frames) fits the budget model,
so a card never gets a profile that refuses the default job while a slower one would run it.

The budget model those choices rest on (weights, activations, VAE working sets, reserve, host RAM) is in
`memory_budget.py`: this module decides, that one counts.
"""

from __future__ import annotations

from collections.abc import Callable

from worker_app_fastwan.core.errors import JobFailure
from worker_app_fastwan.core.schema import MAX_FRAMES, MIN_FRAMES, ErrorCode
from worker_app_fastwan.model.memory_budget import (
    FASTVIDEO,
    PLANS,
    PROFILES,
    REQUESTABLE,
    Profile,
    estimate,
    fits,
    host_ram_gib,
    reserve_gib,
)

DEFAULT_JOB = (1280, 704, 121)  # width, height, num_frames: what `auto` must be able to run
SMALLEST_JOB = (256, 256, MIN_FRAMES)

_WHAT: dict[str, str] = {
    "none": "everything on the GPU, VAE decoded per latent frame",
    "balanced": "transformer + VAE on the GPU, text encoder streamed through it block by block, tiled VAE",
    "low_vram": "model CPU offload (one component on the GPU at a time), tiled VAE",
    FASTVIDEO: "FastVideo: transformer + float32 VAE on the GPU, its float32 text encoder visits to encode",
}


def choose_profile(
    requested: str, vram_total_gb: float | None, *, vae_dtype: str = "bfloat16", cudnn_benchmark: bool = False
) -> Profile:
    """An explicit profile wins; `auto` takes the fastest one that runs the default job on this card."""
    if requested not in REQUESTABLE:
        raise ValueError(f"OFFLOAD_PROFILE: must be one of {', '.join(REQUESTABLE)} (got {requested!r})")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if vram_total_gb is None:
        return "none"  # no CUDA: the CPU holds everything anyway
    for profile in PROFILES:
        if fits(*DEFAULT_JOB, vram_total_gb, profile, vae_dtype, cudnn_benchmark):
            return profile
    return "low_vram"  # the least memory; smaller jobs may still fit, and check_job_fits says which


def max_frames(
    width: int,
    height: int,
    vram_total_gb: float,
    profile: str,
    *,
    vae_dtype: str = "bfloat16",
    limit: int = MAX_FRAMES,
    cudnn_benchmark: bool = False,
) -> int | None:
    """The largest valid num_frames (4k+1, ≤ limit) that fits at width×height, or None when none does."""
    best = None
    for frames in range(MIN_FRAMES, limit + 1, 4):
        if not fits(width, height, frames, vram_total_gb, profile, vae_dtype, cudnn_benchmark):
            break  # the need only grows with the frame count
        best = frames
    return best


def check_job_fits(
    width: int,
    height: int,
    num_frames: int,
    vram_total_gb: float | None,
    profile: str,
    *,
    vae_dtype: str = "bfloat16",
    cudnn_benchmark: bool = False,
) -> None:
    """Refuse, before any GPU work, a job whose size this card cannot hold under this profile.

    Too large for the card: `JobFailure(invalid_input)` naming width, height and num_frames and the most this
    card can do at that size. The card cannot hold even the smallest job under this profile (a worker set
    up wrong, not a bad job): `JobFailure(out_of_memory, retryable=True)`, so the job can go elsewhere.
    Prompt encoding is not checked here: it is the same for every job, the start-up warm-up runs it, and
    `describe()` warns at start-up when the model says it cannot fit.
    """
    if vram_total_gb is None:
        return  # CPU: no GPU budget to check
    if profile == "auto":
        profile = choose_profile(profile, vram_total_gb, vae_dtype=vae_dtype, cudnn_benchmark=cudnn_benchmark)
    reserve = reserve_gib(vram_total_gb)
    card = f"{vram_total_gb:.0f} GB GPU"
    if not fits(*SMALLEST_JOB, vram_total_gb, profile, vae_dtype, cudnn_benchmark):
        floor = (
            estimate(*SMALLEST_JOB, profile, vae_dtype=vae_dtype, cudnn_benchmark=cudnn_benchmark).job_peak_gib
            + reserve
        )
        raise JobFailure(
            ErrorCode.out_of_memory,
            f"this {card} cannot run the model with OFFLOAD_PROFILE={profile}: even a "
            f"{SMALLEST_JOB[0]}×{SMALLEST_JOB[1]}×{SMALLEST_JOB[2]} job needs ≈ {floor:.1f} GiB of "
            f"{vram_total_gb:.1f} GiB; this worker needs a larger GPU"
            + ("" if profile in ("low_vram", FASTVIDEO) else " or OFFLOAD_PROFILE=low_vram"),
            retryable=True,
        )
    if fits(width, height, num_frames, vram_total_gb, profile, vae_dtype, cudnn_benchmark):
        return
    need = (
        estimate(width, height, num_frames, profile, vae_dtype=vae_dtype, cudnn_benchmark=cudnn_benchmark).job_peak_gib
        + reserve
    )
    asked = (
        f"width×height×num_frames = {width}×{height}×{num_frames} = {width * height * num_frames:,} "
        f"pixel-frames exceeds what this {card} can generate with OFFLOAD_PROFILE={profile}"
    )
    best = max_frames(
        width,
        height,
        vram_total_gb,
        profile,
        limit=max(num_frames, MAX_FRAMES),
        vae_dtype=vae_dtype,
        cudnn_benchmark=cudnn_benchmark,
    )
    if best is None:
        raise JobFailure(
            ErrorCode.invalid_input,
            f"{asked} (at {width}×{height} not even {MIN_FRAMES} frames fit: this job needs ≈ "
            f"{need:.1f} of {vram_total_gb:.1f} GiB); lower the size (width, height)",
        )
    raise JobFailure(
        ErrorCode.invalid_input,
        f"{asked} (max ≈ {width * height * best:,} pixel-frames at {width}×{height}, i.e. "
        f"num_frames ≤ {best}; this job needs ≈ {need:.1f} of {vram_total_gb:.1f} GiB); "
        "lower num_frames or the size",
    )


def admission(
    vram_total_gb: float | None, profile: str, *, vae_dtype: str = "bfloat16", cudnn_benchmark: bool = False
) -> Callable[[int, int, int], bool]:
    """`check_job_fits` as a yes/no question about a size: what the warm-up plans with."""

    def admits(width: int, height: int, num_frames: int) -> bool:
        try:
            check_job_fits(
                width, height, num_frames, vram_total_gb, profile, vae_dtype=vae_dtype, cudnn_benchmark=cudnn_benchmark
            )
        except JobFailure:
            return False
        return True

    return admits


def describe(
    profile: str, vram_total_gb: float | None, *, vae_dtype: str = "bfloat16", cudnn_benchmark: bool = False
) -> str:
    """One line for the start-up log: the profile, what it does, what this card can do with it."""
    if vram_total_gb is None:
        return f"{profile}: no CUDA device, everything runs on the CPU"
    width, height, frames = DEFAULT_JOB
    line = f"{profile} on a {vram_total_gb:.1f} GiB GPU ({_WHAT.get(profile, '?')}, VAE decoder {vae_dtype})"
    if profile not in PLANS:
        return line
    reserve = reserve_gib(vram_total_gb)
    best = max_frames(width, height, vram_total_gb, profile, vae_dtype=vae_dtype, cudnn_benchmark=cudnn_benchmark)
    default_need = (
        estimate(width, height, frames, profile, vae_dtype=vae_dtype, cudnn_benchmark=cudnn_benchmark).job_peak_gib
        + reserve
    )
    line += (
        f"; {width}×{height}×{frames} needs ≈ {default_need:.1f} GiB; at {width}×{height} num_frames ≤ {best}"
        if best is not None
        else f"; not even {width}×{height}×{MIN_FRAMES} fits"
    )
    encode_need = estimate(width, height, frames, profile, vae_dtype=vae_dtype).encode_gib + reserve
    if encode_need > vram_total_gb:
        line += (
            f"; WARNING: prompt encoding needs ≈ {encode_need:.1f} GiB with the text encoder on the GPU, more "
            "than this card has"
        )
    return line + f"; host RAM needed ≈ {host_ram_gib(profile, vae_dtype=vae_dtype):.0f} GiB"
