"""`GET /v1/jobs/{job_id}/video`: a finished job's video, for the page's player and download link.

With local storage the worker wrote the file under its LOCAL_OUTPUT_DIR and the result's `storage_key`
is its path relative to that folder; the stub reads the same folder (its own LOCAL_OUTPUT_DIR, same
default) and serves the file with HTTP range requests (seeking) as `video/mp4`. The path is taken from
what the job's result says, never guessed, and a key that leads outside the folder (`..`, an absolute
path, a symlink out) is refused. With B2 the result's URL is already an https URL: the route redirects there,
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
from orchestrator_stub.results import StorageOrigins
from worker_app_fastwan.core.schema import ID_PATTERN

JOB_ID = PathParam(pattern=ID_PATTERN, max_length=128)


def build_router(store: Store, output_dir: Path, storage: StorageOrigins) -> APIRouter:
    router = APIRouter(tags=["public"])

    @router.get("/v1/jobs/{job_id}/video", responses={206: {}, 307: {}, 404: {}, 416: {}})
    def video(job_id: str = JOB_ID, download: bool = Query(default=False)) -> Response:
        job = store.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"unknown job {job_id}")
        result = job["result"]
        if job["status"] != "completed" or not isinstance(result, dict):
            raise HTTPException(404, f"job {job_id} has no video (it is {job['status']})")
        url = str(result.get("video_url", ""))
        if urlsplit(url).scheme in ("http", "https"):
            if not storage.allows(url):
                raise HTTPException(404, f"job {job_id}'s video is not on an allowed storage origin (STORAGE_ORIGINS)")
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

    return router


def local_video_path(output_dir: Path, result: dict[str, Any]) -> Path | None:
    """The result's file under `output_dir`, or None when its key is missing, leaves the folder, or is no file."""
    key = result.get("storage_key")
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
