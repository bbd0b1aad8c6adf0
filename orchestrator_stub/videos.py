"""`GET /v1/jobs/{job_id}/video` and `/poster`: a finished job's video and poster, for the page.

- On one of the stub's output targets (v1.2, `outputs.py`): a 307 to a fresh presigned GET of the object
  the stub checked when the job completed (the result's own URL is this route).
- Local storage: the worker wrote the file under its LOCAL_OUTPUT_DIR and the result's `storage_key`
  (`poster_key`) is its path relative to that folder; the stub reads the same folder (its own
  LOCAL_OUTPUT_DIR, same default) and serves the file, the video with HTTP range requests (seeking). The
  path is taken from what the job's result says, never guessed, and a key that leads outside the folder
  (`..`, an absolute path, a symlink out) is refused.
- Otherwise (B2 or S3 storage of the worker's own) the result's URL is already an https URL: a 307 there,
  and only there: to an allowed storage origin (`results.StorageOrigins`, the same the result was checked
  against when it was stored; a result stored by an older stub is checked here again). Never elsewhere: the
  stub's address must not become a redirect to wherever a worker says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response

from orchestrator_stub.db import Store
from orchestrator_stub.outputs import OutputStore
from orchestrator_stub.results import StorageOrigins
from worker_app_fastwan.core.schema import ID_PATTERN

JOB_ID = PathParam(pattern=ID_PATTERN, max_length=128)


def build_router(
    store: Store, output_dir: Path, storage: StorageOrigins, outputs: OutputStore | None = None
) -> APIRouter:
    router = APIRouter(tags=["public"])

    def finished(job_id: str) -> dict[str, Any]:
        job = store.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"unknown job {job_id}")
        result = job["result"]
        if job["status"] != "completed" or not isinstance(result, dict):
            raise HTTPException(404, f"job {job_id} has no video (it is {job['status']})")
        return result

    def on_target(job_id: str, result: dict[str, Any], key_field: str) -> Response | None:
        """A 307 to the object of a checked output target, if the result is on one."""
        if outputs is None or not isinstance(result.get("storage_key"), str):
            return None
        target = store.output_target(job_id, result["storage_key"])
        if target is None or target["verified_at"] is None:
            return None
        key = target["video_key"] if key_field == "storage_key" else target["poster_key"]
        if key is None or result.get(key_field) != key:
            raise HTTPException(404, f"job {job_id} has no {'video' if key_field == 'storage_key' else 'poster'}")
        return RedirectResponse(outputs.url_for(key), status_code=307)

    @router.get("/v1/jobs/{job_id}/video", responses={206: {}, 307: {}, 404: {}, 416: {}})
    def video(job_id: str = JOB_ID, download: bool = Query(default=False)) -> Response:
        result = finished(job_id)
        if (redirect := on_target(job_id, result, "storage_key")) is not None:
            return redirect
        url = str(result.get("video_url", ""))
        if (elsewhere := _elsewhere(url, job_id, storage, "video")) is not None:
            return elsewhere
            return RedirectResponse(url, status_code=307)
        path = local_video_path(output_dir, result)
        if path is None:
            raise HTTPException(404, f"job {job_id}'s video is not in this stub's LOCAL_OUTPUT_DIR")
        disposition = "attachment" if download else "inline"
        return FileResponse(
            path,
            media_type="video/mp4",
            filename=f"{job_id}.mp4",
            content_disposition_type=disposition,
            headers={"X-Content-Type-Options": "nosniff"},
        )

    @router.get("/v1/jobs/{job_id}/poster", responses={307: {}, 404: {}})
    def poster(job_id: str = JOB_ID) -> Response:
        result = finished(job_id)
        if not result.get("poster_key") and not result.get("poster_url"):
            raise HTTPException(404, f"job {job_id} has no poster")
        if (redirect := on_target(job_id, result, "poster_key")) is not None:
            return redirect
        url = str(result.get("poster_url", ""))
        if (elsewhere := _elsewhere(url, job_id, storage, "poster")) is not None:
            return elsewhere
        path = local_video_path(output_dir, result, "poster_key")
        if path is None:
            raise HTTPException(404, f"job {job_id}'s poster is not in this stub's LOCAL_OUTPUT_DIR")
        return FileResponse(path, media_type="image/jpeg", headers={"X-Content-Type-Options": "nosniff"})

    return router


def _elsewhere(url: str, job_id: str, storage: StorageOrigins, what: str) -> Response | None:
    """A 307 to an http(s) URL on an allowed storage origin; a 404 for one elsewhere; None for a file URL or
    this stub's own route for the job (never a redirect loop), which are served from here."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.path.startswith(f"/v1/jobs/{job_id}/"):
        return None
    if not storage.allows(url):
        raise HTTPException(404, f"job {job_id}'s {what} is not on an allowed storage origin (STORAGE_ORIGINS)")
    return RedirectResponse(url, status_code=307)


def local_video_path(output_dir: Path, result: dict[str, Any], field: str = "storage_key") -> Path | None:
    """The result's file (`field`: its video, or `poster_key`) under `output_dir`, or None when the key is
    missing, leaves the folder, or is no file."""
    key = result.get(field)
    if not isinstance(key, str) or not key or "\x00" in key:
        return None
    try:
        root = output_dir.resolve()
        path = (root / key).resolve()  # resolves `..` and symlinks before the check below
        if not path.is_relative_to(root) or path == root or not path.is_file():
            return None
    except (OSError, ValueError, RuntimeError):  # a name too long for the file system; a loop of links
        return None
    return path
