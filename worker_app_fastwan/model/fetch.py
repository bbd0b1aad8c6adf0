"""Where the weights come from: `MODEL_PATH` if set, else the `MODEL_ID` snapshot in the hub cache.

- `resolve_model_source(settings)` is what a backend calls before loading: a folder that holds the model.
  A cached snapshot is used without any network call (a cold start must not depend on the hub being up);
  only when the cache lacks the model is it downloaded, unless huggingface_hub is offline.
- `download_model(settings)` fetches it, with progress bars or a given tqdm class; the command around it,
  `python -m worker_app_fastwan download-model` (also run at image build time by `Dockerfile.fastwan
  --build-arg BAKE_MODEL=1`), is `cli/download_model.py`.
- Every way of not getting the model ends in one exception, `ModelUnavailable`, whose str() is one line
  that says what to do; the CLI prints it and exits 3 (`ExitCode.MODEL_UNAVAILABLE`).

huggingface_hub itself reads `HF_HOME` / `HF_HUB_CACHE` (where), `HF_HUB_OFFLINE` (whether to go online),
`HF_TOKEN` (gated models), `HF_ENDPOINT` and its timeouts from the environment, once, when it is first
imported. This module imports it inside the functions only, so importing this module stays cheap and
the parent process, which never loads a model, never pays for it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from worker_app_fastwan.core.errors import ModelUnavailable
from worker_app_fastwan.core.settings import Settings

log = logging.getLogger(__name__)

# The components a diffusers-format Wan folder must have when it has no model_index.json.
REQUIRED_SUBFOLDERS = ("transformer", "vae")
# Files of the hub repository the worker never reads (previews, docs): skipping them saves the download.
IGNORE_PATTERNS = ["*.mp4", "*.gif", "*.png", "*.jpg", "*.jpeg", "*.webp", "*.md", "assets/*", "images/*"]
MAX_REASON_CHARS = 240
DOWNLOAD_HINT = (
    "set MODEL_PATH to a local copy or run `python -m worker_app_fastwan download-model` on a machine with network"
)


def _one_line(text: str, limit: int | None = None) -> str:
    flat = " ".join(str(text).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


def _reason(exc: BaseException) -> str:
    """The root cause in one short line: the hub wraps a refused connection in LocalEntryNotFoundError."""
    cause = exc.__cause__ or exc
    return _one_line(f"{type(cause).__name__}: {cause}", MAX_REASON_CHARS)


def model_dir_problem(path: Path) -> str | None:
    """Why `path` is not a diffusers-format model folder, or None when it is one."""
    if not path.is_dir():
        return f"{path} is not a folder"
    if (path / "model_index.json").is_file():
        return None
    if all((path / sub).is_dir() for sub in REQUIRED_SUBFOLDERS):
        return None
    found = sorted(p.name for p in path.iterdir())[:8]
    listing = ", ".join(found) if found else "it is empty"
    return (
        f"{path} is not a diffusers model folder: it has no model_index.json and no "
        f"{' + '.join(s + '/' for s in REQUIRED_SUBFOLDERS)} subfolders (found: {listing})"
    )


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _not_found_errors() -> tuple[type[BaseException], ...]:
    """What a cache lookup raises when the model is missing or only half there (names differ by hub version)."""
    from huggingface_hub import errors

    names = ("LocalEntryNotFoundError", "IncompleteSnapshotError")
    return tuple(getattr(errors, n) for n in names if hasattr(errors, n)) + (FileNotFoundError,)


def cached_snapshot(model_id: str) -> Path | None:
    """The complete cached snapshot of `model_id`, found without any network call, or None."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(model_id, local_files_only=True, ignore_patterns=IGNORE_PATTERNS))
    except _not_found_errors():
        return None
    return folder if model_dir_problem(folder) is None else None


def resolve_model_source(settings: Settings) -> Path:
    """The folder to load the model from: MODEL_PATH, else the cached (or freshly downloaded) MODEL_ID."""
    if settings.MODEL_PATH is not None:
        path = Path(settings.MODEL_PATH).expanduser()
        problem = model_dir_problem(path)
        if problem:
            raise ModelUnavailable(
                f"MODEL_PATH: {problem}; point it at a diffusers-format copy of "
                f"{settings.MODEL_ID} or unset it to use the hub cache"
            )
        return path.resolve()
    cached = cached_snapshot(settings.MODEL_ID)
    if cached is not None:
        log.info("model found in the cache", extra={"model": settings.MODEL_ID, "path": str(cached)})
        return cached
    log.info("model not in the cache: downloading", extra={"model": settings.MODEL_ID, "cache": str(hub_cache())})
    return download_model(settings, progress=False)


def download_model(settings: Settings, *, progress: bool = True, tqdm_class: type | None = None) -> Path:
    """Fetch MODEL_ID into the hub cache (or into MODEL_PATH when that is set), with tqdm progress bars.

    Resumes a partial download; returns at once when the model is already complete locally.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    model_id = settings.MODEL_ID
    local_dir = Path(settings.MODEL_PATH).expanduser() if settings.MODEL_PATH is not None else None
    if local_dir is not None and model_dir_problem(local_dir) is None:
        return local_dir.resolve()  # already a model: nothing to fetch, no network needed
    where = str(local_dir) if local_dir is not None else str(hub_cache())
    if local_dir is None:
        cached = cached_snapshot(model_id)
        if cached is not None:
            return cached
    if hub_offline():
        raise ModelUnavailable(
            f"model {model_id} is not in the cache ({where}) and cannot be downloaded "
            f"(offline: HF_HUB_OFFLINE is set); {DOWNLOAD_HINT}"
        )

    bars_were_off = are_progress_bars_disabled()
    if not progress and not bars_were_off:
        disable_progress_bars()
    try:
        folder = Path(
            snapshot_download(model_id, local_dir=local_dir, ignore_patterns=IGNORE_PATTERNS, tqdm_class=tqdm_class)
        )
    except Exception as exc:  # noqa: BLE001 - every failure becomes the one error type, classified below
        raise ModelUnavailable(_download_failure(model_id, where, exc)) from exc
    finally:
        if not progress and not bars_were_off:
            enable_progress_bars()
    problem = model_dir_problem(folder)
    if problem:
        raise ModelUnavailable(f"model {model_id} was downloaded but {problem}; check MODEL_ID")
    return folder


def _download_failure(model_id: str, where: str, exc: BaseException) -> str:
    """One line for a failed download: missing repo or token, no network, or a full disk."""
    from huggingface_hub import errors

    auth_errors = tuple(getattr(errors, n) for n in ("RepositoryNotFoundError", "GatedRepoError") if hasattr(errors, n))
    if isinstance(exc, auth_errors):
        return (
            f"model {model_id} cannot be downloaded: the hub has no such repository or it needs a token "
            f"({_reason(exc)}); check MODEL_ID, set HF_TOKEN for a gated model, or set MODEL_PATH"
        )
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 28:  # ENOSPC
        return (
            f"model {model_id} does not fit in {where} ({_reason(exc)}); free space or point HF_HOME "
            "(or MODEL_PATH) at a larger volume"
        )
    offline_error = getattr(errors, "OfflineModeIsEnabled", ())
    if isinstance(exc, offline_error) or isinstance(exc.__cause__, offline_error):
        return (
            f"model {model_id} is not in the cache ({where}) and cannot be downloaded "
            f"(offline: HF_HUB_OFFLINE is set); {DOWNLOAD_HINT}"
        )
    return (
        f"model {model_id} is not in the cache ({where}) and cannot be downloaded "
        f"(network error: {_reason(exc)}); {DOWNLOAD_HINT}"
    )


def folder_size(folder: Path) -> tuple[int, int]:
    """Bytes and files under `folder`, following the hub cache's symlinks to the blobs they point at."""
    files = [p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts]
    return sum(p.stat().st_size for p in files), len(files)
