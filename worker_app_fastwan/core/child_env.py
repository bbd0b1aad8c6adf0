"""What the worker's child processes (the GPU child, the image decoder) may see of the parent's secrets: nothing.

They get an allow-listed environment (the interpreter's, the model hub's, CUDA's and the math libraries'
variables) and, for the GPU child, settings without the storage and orchestrator credentials: a process
that runs strangers' prompts and parses strangers' images has no use for the keys that upload videos or
speak for the worker.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker_app_fastwan.core.settings import Settings

ALLOWED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "TEMP",
        "TMP",
        "LD_LIBRARY_PATH",
        "VIRTUAL_ENV",
        "CC",
        "CXX",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "COVERAGE_PROCESS_START",
    }
)
# The model hub (HF_TOKEN included: the child may download the model), CUDA and the libraries it loads.
ALLOWED_PREFIXES = (
    "PYTHON",
    "LC_",
    "XDG_",
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "DIFFUSERS_",
    "TOKENIZERS_",
    "FASTVIDEO_",
    "IMAGEIO_",
    "TORCH",
    "PYTORCH_",
    "CUDA_",
    "CUDNN_",
    "CUBLAS_",
    "NVIDIA_",
    "NCCL_",
    "TRITON_",
    "OMP_",
    "GOMP_",
    "KMP_",
    "MKL_",
    "OPENBLAS_",
)
# Settings the GPU child never uses; blanked in its copy.
SECRET_SETTINGS = (
    "INTERNAL_API_KEY",
    "ORCHESTRATOR_BASE_URL",
    "B2_KEY_ID",
    "B2_APP_KEY",
    "B2_BUCKET_NAME",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "S3_BUCKET",
)


def minimal_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of `environ`."""
    return {k: v for k, v in environ.items() if k in ALLOWED_NAMES or k.startswith(ALLOWED_PREFIXES)}


def child_settings(settings: Settings) -> Settings:
    """`settings` without the credentials (and the orchestrator URL, which may carry some)."""
    return settings.model_copy(update=dict.fromkeys(SECRET_SETTINGS))


@contextlib.contextmanager
def only_environment(env: Mapping[str, str]) -> Iterator[None]:
    """`os.environ` is `env` inside the block: multiprocessing's spawn passes the parent's environment on.

    Call it from the event-loop thread around a process start only; it is restored before anything else runs.
    """
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
