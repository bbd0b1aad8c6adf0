"""Generation backends. Imported only in the GPU child process: this package pulls in torch."""

from __future__ import annotations

from worker_app_fastwan.core.logs import adopt_library_loggers
from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.pipelines.base import Backend


def make_backend(settings: Settings) -> Backend:
    """The backend `settings` ask for, not loaded yet.

    The refusals that need no model library (no CUDA device, no weights) come before transformers and
    diffusers are imported (seconds of CPU): a box that cannot serve says so at once. Their logging is
    adopted just before, so that nothing they print bypasses ours.
    """
    if settings.PIPELINE_BACKEND == "tiny":
        adopt_library_loggers()
        from worker_app_fastwan.pipelines.tiny import TinyBackend

        return TinyBackend()
    from worker_app_fastwan.model.cuda_check import require_cuda
    from worker_app_fastwan.model.fetch import resolve_model_source

    require_cuda(settings)  # before the weights are looked for: no 24 GB download for a CPU box
    name = str(settings.MODEL_PATH or settings.MODEL_ID)
    if settings.PIPELINE_BACKEND == "fastvideo":
        from worker_app_fastwan.pipelines.fastvideo_backend import FastVideoBackend, fastvideo_model

        model = fastvideo_model(settings)
        adopt_library_loggers()
        return FastVideoBackend(model, name)
    source = resolve_model_source(settings)
    adopt_library_loggers()
    from worker_app_fastwan.pipelines.diffusers_backend import DiffusersBackend

    return DiffusersBackend(
        source,
        name,
        offload_profile=settings.OFFLOAD_PROFILE,
        compile_transformer=settings.TORCH_COMPILE,
        vae_dtype=settings.VAE_DTYPE,
        i2v_enabled=settings.I2V_ENABLED,
        cudnn_benchmark=settings.CUDNN_BENCHMARK,
    )
