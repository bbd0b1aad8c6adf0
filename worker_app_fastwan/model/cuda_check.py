"""The no-CUDA refusal: the production backends do not quietly run a 5B model on the CPU.

Without a CUDA device, `diffusers` (or `fastvideo`) would load 24 GB of weights into RAM and take hours
per video. The GPU child calls `require_cuda` before it looks for the weights, so the refusal comes at
start-up, before any download; `PIPELINE_BACKEND=tiny` runs the same code path on the CPU in seconds, and
`ALLOW_CPU_INFERENCE=true` insists on the real model anyway.
"""

from __future__ import annotations

from worker_app_fastwan.core.errors import ModelUnavailable
from worker_app_fastwan.core.settings import Settings


def require_cuda(settings: Settings) -> None:
    """Raise `ModelUnavailable` (one line, what to do) when a production backend has no CUDA device."""
    if settings.PIPELINE_BACKEND == "tiny" or settings.ALLOW_CPU_INFERENCE:
        return
    import torch

    if torch.cuda.is_available():
        return
    why = (
        f"this torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)"
        if torch.version.cuda is None
        else "torch sees no CUDA device (check the NVIDIA driver, CUDA_VISIBLE_DEVICES, and Docker's --gpus)"
    )
    raise ModelUnavailable(
        f"no CUDA device: {why}; the {settings.PIPELINE_BACKEND} backend would run the 5B model on the CPU "
        "for hours per video. To try the code path use PIPELINE_BACKEND=tiny (a miniature trained here, seconds); "
        "to insist on the CPU set ALLOW_CPU_INFERENCE=true"
    )
