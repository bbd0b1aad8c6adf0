"""torch.compile's caches on the model volume, so that a restarted container does not compile again.

Inductor (TORCHINDUCTOR_CACHE_DIR: its FX-graph and autotuning caches) and Triton (TRITON_CACHE_DIR: the
compiled kernels) keep what they build under /tmp by default, which a new container does not have: every
start would compile the transformer's blocks again (minutes). Here they go under COMPILE_CACHE_DIR, by
default `torch-compile` under HF_HOME (the image's model volume). Their cache keys include the GPU, torch
and Triton versions, so a shared folder never serves a kernel built for another card or build. A variable
the operator set stays; a folder that cannot be made leaves that cache where the library puts it.
Set in the GPU process before torch is imported, where something compiles.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from worker_app_fastwan.core.settings import Settings

log = logging.getLogger(__name__)

FOLDERS = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}


def compile_cache_root(settings: Settings) -> Path:
    if settings.COMPILE_CACHE_DIR is not None:
        return settings.COMPILE_CACHE_DIR
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "torch-compile"


def compile_cache_env(root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The cache variables to set: those `environ` lacks, each on a folder under `root` that could be made."""
    chosen = {}
    for name, sub in FOLDERS.items():
        if environ.get(name):
            continue
        folder = root / sub
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("compile cache folder unusable", extra={"folder": str(folder), "error": str(exc)})
            continue
        if not os.access(folder, os.W_OK | os.X_OK):
            log.warning("compile cache folder not writable", extra={"folder": str(folder)})
            continue
        chosen[name] = str(folder)
    return chosen


def use_compile_caches(settings: Settings) -> None:
    """In the GPU process, before torch is imported: where something compiles (TORCH_COMPILE, or FastVideo's
    Triton kernels); the tiny backend compiles nothing."""
    if settings.PIPELINE_BACKEND == "tiny" or not (settings.TORCH_COMPILE or settings.PIPELINE_BACKEND == "fastvideo"):
        return
    os.environ.update(compile_cache_env(compile_cache_root(settings), os.environ))
