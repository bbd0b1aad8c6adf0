"""The checks of `doctor` that need no model: settings, disk, GPU facts, host RAM, NVENC, weights, storage,
orchestrator. Each returns `Check`s; none prints, none raises for what it finds."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.doctor.gpu import CudaFacts, driver_needed
from worker_app_fastwan.doctor.report import Check, fail, ok, skip, warn
from worker_app_fastwan.model.memory_budget import FASTVIDEO
from worker_app_fastwan.model.offload import DEFAULT_JOB, choose_profile, max_frames

GB = 1e9
# What the checkpoint weighs when the hub cannot be asked (the diffusers folder, previews excluded).
MODEL_GB_FALLBACK = 24.0
SCRATCH_GB = 2.0  # a job's frames and MP4 in STATE_DIR/work
PROBE_TIMEOUT_S = 10.0


def _where(url: str) -> str:
    """scheme://host[:port] only: a URL may carry credentials in its userinfo, path or query."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def settings_check(settings: Settings) -> Check:
    model = f"MODEL_PATH {settings.MODEL_PATH}" if settings.MODEL_PATH else f"MODEL_ID {settings.MODEL_ID}"
    orch = _where(settings.ORCHESTRATOR_BASE_URL) if settings.ORCHESTRATOR_BASE_URL else "no orchestrator"
    return ok(
        "settings",
        f"WORKER_MODE={settings.WORKER_MODE}, PIPELINE_BACKEND={settings.PIPELINE_BACKEND}, {model}, "
        f"OFFLOAD_PROFILE={settings.OFFLOAD_PROFILE}, VAE_DTYPE={settings.VAE_DTYPE}, "
        f"I2V_ENABLED={str(settings.I2V_ENABLED).lower()}, storage {settings.storage}, {orch}",
    )


def state_dir_check(settings: Settings) -> Check:
    folder = settings.STATE_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-") as fh:
            fh.write(b"probe")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return fail("state dir", f"STATE_DIR {folder} is not writable: {exc.strerror or exc}")
    free = shutil.disk_usage(folder).free / GB
    if free < SCRATCH_GB:
        return fail("state dir", f"STATE_DIR {folder}: only {free:.1f} GB free, jobs need ≈ {SCRATCH_GB:.0f} GB")
    return ok("state dir", f"STATE_DIR {folder} writable, {free:.0f} GB free")


def cuda_checks(settings: Settings, facts: CudaFacts) -> list[Check]:
    """Driver and CUDA, then one line per GPU: memory, the profile it gets, the largest default-size job."""
    if settings.PIPELINE_BACKEND == "tiny":
        return [skip("cuda", "not needed with PIPELINE_BACKEND=tiny (it runs on the CPU), so not probed")]
    if facts.error:
        return [fail("cuda", facts.error)]
    build = f"torch {facts.torch_version}" + (f" (CUDA {facts.cuda_version})" if facts.cuda_version else "")
    driver = f"driver {facts.driver}" if facts.driver else "no nvidia-smi (no NVIDIA driver on this box)"
    if not facts.available:
        return [fail("cuda", f"{settings.PIPELINE_BACKEND} needs a CUDA GPU: {facts.why_not}; {build}; {driver}")]
    checks = [_driver_check(facts, build)]
    for gpu in facts.gpus:
        checks.append(_gpu_check(settings, gpu.index, gpu.name, gpu.total_gib, gpu.free_gib))
    return checks


def _driver_check(facts: CudaFacts, build: str) -> Check:
    want = driver_needed(facts.cuda_version)
    if facts.driver and want:
        major = int(facts.driver.split(".")[0])
        if major < want:
            return fail("cuda", f"driver {facts.driver} is older than {build} needs (≥ {want})")
        return ok("cuda", f"driver {facts.driver} (≥ {want} needed), {build}")
    return ok("cuda", f"{build}; driver {facts.driver or 'version unknown'}")


def _gpu_check(settings: Settings, index: int, name: str, total: float, free: float) -> Check:
    label = f"gpu {index}"
    head = f"{name}, {total:.1f} GiB, {free:.1f} GiB free"
    if settings.PIPELINE_BACKEND == "tiny":
        return ok(label, f"{head} (unused: PIPELINE_BACKEND=tiny)")
    profile = (
        FASTVIDEO
        if settings.PIPELINE_BACKEND == "fastvideo"
        else choose_profile(
            settings.OFFLOAD_PROFILE, total, vae_dtype=settings.VAE_DTYPE, cudnn_benchmark=settings.CUDNN_BENCHMARK
        )
    )
    width, height, _ = DEFAULT_JOB
    best = max_frames(
        width, height, total, profile, vae_dtype=settings.VAE_DTYPE, cudnn_benchmark=settings.CUDNN_BENCHMARK
    )
    if best is None:
        return fail(label, f"{head}; profile {profile}: not even a {width}×{height}×5 job fits")
    line = f"{head}; profile {profile}; admits {width}×{height} up to {best} frames"
    if free < total * 0.9:
        return warn(label, f"{line}; {total - free:.1f} GiB already in use by another process")
    return ok(label, line)


def nvenc_check(
    settings: Settings,
    *,
    works: bool | None = None,
    env: dict[str, str] | None = None,
    library_loads: bool | None = None,
) -> Check:
    """Whether ffmpeg encodes with NVENC here; when not, whether the container (not the card) is the reason.
    `works`, `env` (for NVIDIA_DRIVER_CAPABILITIES) and `library_loads` are this box's facts unless given."""
    from worker_app_fastwan.doctor.image import granted_capabilities, nvenc_library_loads, nvenc_missing_why
    from worker_app_fastwan.gpu_child.encoder import nvenc_works

    if works is None:
        works = nvenc_works()
    if works:
        return ok("nvenc", "available: ENCODER=auto encodes on the GPU")
    if library_loads is None:
        library_loads = nvenc_library_loads()
    why_not = nvenc_missing_why(granted_capabilities(env), library_loads)
    explicit = settings.ENCODER == "h264_nvenc"
    if why_not is not None:
        # A container set-up the operator can fix: a warning (encodes still work, on the CPU), a failure only
        # where NVENC was asked for explicitly.
        return (fail if explicit else warn)("nvenc", f"not available: {why_not}; ENCODER={settings.ENCODER}")
    if explicit:
        return fail("nvenc", "ENCODER=h264_nvenc but this box cannot encode with NVENC; use ENCODER=auto")
    return skip("nvenc", f"not available on this GPU (not every GPU has it); ENCODER={settings.ENCODER} uses libx264")


def model_check(settings: Settings) -> Check:
    """Where the weights would come from, and room for them."""
    from huggingface_hub import constants

    from worker_app_fastwan.model.fetch import cached_snapshot, hub_offline, model_dir_problem

    if settings.PIPELINE_BACKEND == "tiny":
        return skip("model", "PIPELINE_BACKEND=tiny loads the miniature shipped in the package: nothing to download")
    if settings.MODEL_PATH is not None:
        path = Path(settings.MODEL_PATH).expanduser()
        problem = model_dir_problem(path)
        if problem:
            return fail("model", f"MODEL_PATH: {problem}")
        baked = os.environ.get("BAKED_MODEL_PATH")
        where = " (baked into the image)" if baked and Path(baked).resolve() == path.resolve() else ""
        return ok("model", f"MODEL_PATH {path}{where}: {_folder_gb(path):.1f} GB, nothing to download")
    cached = cached_snapshot(settings.MODEL_ID)
    if cached is not None:
        return ok("model", f"{settings.MODEL_ID} in the hub cache ({cached}): {_folder_gb(cached):.1f} GB")
    cache = Path(constants.HF_HUB_CACHE)
    if hub_offline():
        return fail("model", f"{settings.MODEL_ID} is not in the cache {cache} and HF_HUB_OFFLINE forbids a download")
    size, why = _hub_size_gb(settings.MODEL_ID)
    free = shutil.disk_usage(_existing(cache)).free / GB
    what = f"{size:.1f} GB" if why is None else f"≈ {size:.0f} GB (size not known: {why})"
    if free < size * 1.05:
        return fail("model", f"{settings.MODEL_ID} needs a download of {what} into {cache}, only {free:.0f} GB free")
    return ok(
        "model", f"{settings.MODEL_ID} not cached: first start downloads {what} into {cache} ({free:.0f} GB free)"
    )


def _folder_gb(path: Path) -> float:
    from worker_app_fastwan.model.fetch import folder_size

    return folder_size(Path(path))[0] / GB


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _hub_size_gb(model_id: str) -> tuple[float, str | None]:
    """The download's size from the hub's file list, or the usual size and why it is a guess."""
    from huggingface_hub import HfApi

    from worker_app_fastwan.model.fetch import IGNORE_PATTERNS

    try:
        info = HfApi().model_info(model_id, files_metadata=True, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - no network, no such repo: the size stays a guess
        return MODEL_GB_FALLBACK, f"{type(exc).__name__}"
    files = [s for s in info.siblings or [] if not any(fnmatch(s.rfilename, p) for p in IGNORE_PATTERNS)]
    return sum(s.size or 0 for s in files) / GB, None


def storage_check(settings: Settings, b2_api: Any = None) -> Check:
    kind = settings.storage
    if kind == "local":
        return _local_storage_check(settings.LOCAL_OUTPUT_DIR)
    if kind == "s3":
        return _s3_check(settings)
    if kind == "presigned":
        return ok("storage", "presigned: no storage credentials here; videos go to the orchestrator's output targets")
    return _b2_check(settings, b2_api)


def _s3_check(settings: Settings) -> Check:
    """Write and delete a small object under S3_PREFIX: what an upload needs, and all a least-privilege key may do."""
    from worker_app_fastwan.job.s3_storage import S3Storage, describe, probe
    from worker_app_fastwan.job.storage import StorageError

    key = f"{settings.S3_PREFIX}doctor/{uuid.uuid4().hex}.txt"
    where = f"bucket {settings.S3_BUCKET}" + (f" at {_where(settings.s3_endpoint)}" if settings.s3_endpoint else "")
    try:
        storage = S3Storage.from_settings(settings, attempts=1)
        probe(storage, key, b"fastwan doctor probe\n")
    except StorageError as exc:
        return fail("storage", f"s3: {exc}")
    except Exception as exc:  # noqa: BLE001 - any refusal is the finding
        who = f"key {settings.AWS_ACCESS_KEY_ID}" if settings.AWS_ACCESS_KEY_ID else "the default AWS credentials"
        return fail("storage", f"s3: {where}: {who} cannot write and delete {key}: {describe(exc)}")
    return ok("storage", f"s3: {where}: wrote and deleted {key}")


def _local_storage_check(folder: Path) -> Check:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".doctor-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        return fail("storage", f"local: LOCAL_OUTPUT_DIR {folder} is not writable: {exc.strerror or exc}")
    return ok("storage", f"local: {folder} writable, {shutil.disk_usage(folder).free / GB:.0f} GB free")


def _b2_check(settings: Settings, api: Any) -> Check:
    """Authorise, then write and delete a small object under B2_PREFIX: what an upload needs."""
    from b2sdk.v2 import B2Api, InMemoryAccountInfo, InMemoryCache

    from worker_app_fastwan.job.storage import B2Storage, StorageError

    api = api or B2Api(InMemoryAccountInfo(), InMemoryCache())
    bucket_name = settings.B2_BUCKET_NAME
    key = f"{settings.B2_PREFIX}doctor/{uuid.uuid4().hex}.txt"
    try:
        B2Storage.from_settings(settings, api)
    except StorageError as exc:
        return fail("storage", f"b2: {exc}")
    try:
        bucket = api.list_buckets(bucket_name=bucket_name)[0]
        info = bucket.upload_bytes(b"fastwan doctor probe\n", key)
        bucket.delete_file_version(info.id_, info.file_name)
    except Exception as exc:  # noqa: BLE001 - any refusal is the finding
        return fail(
            "storage", f"b2: key {settings.B2_KEY_ID} cannot write and delete {key}: {type(exc).__name__}: {exc}"
        )
    return ok("storage", f"b2: bucket {bucket_name}: authorised, wrote and deleted {key}")


def orchestrator_check(settings: Settings) -> Check:
    """Reachable, and the key accepted, without changing anything: a progress report for a job that does
    not exist (answered 404 or 409 when the key is good, 401/403 when it is not)."""
    import httpx

    url = settings.orchestrator_url
    if url is None:
        if settings.WORKER_MODE == "buffer":
            return fail("orchestrator", "ORCHESTRATOR_BASE_URL is not set: buffer mode claims jobs from it")
        return skip("orchestrator", "ORCHESTRATOR_BASE_URL not set: queue mode then posts no progress")
    job_id = f"doctor-probe-{uuid.uuid4().hex[:12]}"
    body = {"worker_id": "doctor", "stage": "queued", "progress": 0.0}
    try:
        response = httpx.post(
            f"{url}/internal/videogen/jobs/{job_id}/progress",
            json=body,
            headers={"X-Internal-Api-Key": settings.api_key()},
            timeout=PROBE_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        return fail("orchestrator", f"{_where(url)} unreachable: {type(exc).__name__}")
    code = response.status_code
    if code in (401, 403):
        return fail("orchestrator", f"{_where(url)} refused INTERNAL_API_KEY (HTTP {code})")
    if code >= 500:
        return fail("orchestrator", f"{_where(url)} answered HTTP {code} (server error)")
    return ok("orchestrator", f"{_where(url)} reachable, INTERNAL_API_KEY accepted (HTTP {code} for a probe job)")
