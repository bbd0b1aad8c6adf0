"""Speed settings of the transformer: the attention kernel (each candidate tried for real) and torch.compile.

`bench/gpu_bench.py` calls `tune_for_cuda` too, so what it times is what a worker runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

# Tried in order. The Docker image installs neither FlashAttention build, so production falls through to
# diffusers' native backend: PyTorch's scaled_dot_product_attention (its own flash kernel on Hopper).
ATTENTION_CANDIDATES = ("_flash_3", "flash")
NATIVE = "native"


def probe_transformer(transformer: Any) -> None:
    """One real forward pass of the transformer on a one-token latent: every kernel a job uses, for ~ms.

    A backend that imports but fails on the arguments diffusers passes (an FA3 build without a keyword,
    say) fails here instead of in the warm-up or in the first paying job.
    """
    cfg = transformer.config
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    patch_t, patch_h, patch_w = cfg.patch_size
    latent = torch.zeros(1, cfg.in_channels, patch_t, patch_h, patch_w, device=device, dtype=dtype)
    text = torch.zeros(1, 8, cfg.text_dim, device=device, dtype=dtype)
    with torch.inference_mode():
        transformer(
            hidden_states=latent,
            timestep=torch.tensor([999.0], device=device),
            encoder_hidden_states=text,
            return_dict=False,
        )


def choose_attention(transformer: Any, candidates: Sequence[str] = ATTENTION_CANDIDATES) -> str:
    """The first candidate that both selects and runs a real forward pass; else diffusers' native SDPA."""
    for backend in candidates:
        try:
            transformer.set_attention_backend(backend)
            probe_transformer(transformer)
        except Exception as exc:  # noqa: BLE001 - an optional kernel that is missing or broken is not an error
            log.info("attention backend unusable", extra={"backend": backend, "why": str(exc)[:300]})
            transformer.set_attention_backend(NATIVE)
            continue
        log.info("attention backend", extra={"backend": backend})
        return backend
    transformer.set_attention_backend(NATIVE)
    log.info("attention backend", extra={"backend": NATIVE, "kernel": "torch scaled_dot_product_attention"})
    return NATIVE


def compile_blocks(transformer: Any, *, backend: str = "inductor") -> None:
    """Compile the 30 identical blocks once (diffusers' regional compilation), not the whole model.

    `dynamic=None` is PyTorch's automatic dynamic shapes: the first size compiles a static graph, the
    second a dynamic one that then serves every size, so new sizes stop recompiling (and never pass the
    recompile limit, past which PyTorch silently runs a frame uncompiled). The warm-up runs both.
    """
    transformer.compile_repeated_blocks(fullgraph=False, dynamic=None, backend=backend)


def cuda_math_settings(*, cudnn_benchmark: bool) -> None:
    """The process-wide CUDA math switches: TF32 for float32 matmuls and convolutions (the float32 VAE
    encoder, VAE_DTYPE=float32), and cuDNN's autotuning (CUDNN_BENCHMARK).

    Autotuning is off by default: every new convolution shape (every new video size the VAE decodes) would
    otherwise time several algorithms inside the first job of that size, and keep the fastest, whose
    workspace may be larger than the heuristics' choice. Whether it pays off for this VAE is measured by
    `bench/gpu_checks.py`; when on, the budget counts its workspace and the warm-up tunes the default size.
    `bench/gpu_bench.py` calls this before either of its paths, so both run with the same switches.
    """
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def tune_for_cuda(transformer: Any, *, compile_transformer: bool, cudnn_benchmark: bool = False) -> str:
    """The CUDA speed settings of the project's path; returns the attention backend in use."""
    cuda_math_settings(cudnn_benchmark=cudnn_benchmark)
    chosen = choose_attention(transformer)
    if compile_transformer:
        compile_blocks(transformer)
    return chosen


def compiled_graphs() -> int:
    """How many graphs torch.compile has built in this process so far (0 when nothing is compiled)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class RecompileWatch:
    """Logs a warning when a job made torch.compile build new graphs (a size or mode the warm-up missed)."""

    def __init__(self) -> None:
        self.seen = compiled_graphs()

    def check(self, what: str) -> int:
        """New graphs since the last check; logged when there are any."""
        now = compiled_graphs()
        new, self.seen = now - self.seen, now
        if new:
            log.warning("torch.compile compiled during a job", extra={"new_graphs": new, "job": what})
        return new
