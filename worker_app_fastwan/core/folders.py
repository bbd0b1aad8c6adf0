"""The folders the worker writes, and whether this process can write them.

In a container they are often bind mounts: Docker creates a missing host folder as root, a host folder may
belong to another user, or be mounted read-only. The entrypoint gives them to the worker user where it can
(run_fastwan_worker.sh, `run_as_user`); what is still not writable is found here, before anything starts
(`check-settings`) and by `doctor`, and named in one line with the fix.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from worker_app_fastwan.core.settings import Settings


def written_folders(settings: Settings) -> list[tuple[str, Path]]:
    """(the setting that names it, the folder) for every folder the worker writes as configured."""
    folders = [("STATE_DIR", settings.STATE_DIR)]
    if settings.storage == "local":
        folders.append(("LOCAL_OUTPUT_DIR", settings.LOCAL_OUTPUT_DIR))
    if settings.MODEL_PATH is None and settings.PIPELINE_BACKEND != "tiny":
        # The model is fetched into (or found in) the hub cache: a download writes there.
        from huggingface_hub import constants

        folders.append(("HF_HOME", Path(constants.HF_HUB_CACHE)))
    return folders


def folder_problem(name: str, folder: Path) -> str | None:
    """None when this process can create `folder` and a file in it; else one line naming it and the fix."""
    folder = Path(folder).expanduser()
    probe = folder / f".fastwan-probe-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        return f"{name}: {folder} is not writable by uid {os.getuid()} ({exc.strerror or exc}); {_fix(exc, folder)}"
    return None


def _fix(exc: OSError, folder: Path) -> str:
    if exc.errno == errno.EROFS:
        return "mount it read-write (drop :ro from the -v option or the compose volume)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        uid, gid = os.getuid(), os.getgid()
        return (
            f"start the container as root (no --user) so that the entrypoint gives it to the worker user, "
            f"or on the host: chown -R {uid}:{gid} <the folder mounted at {folder}>"
        )
    if exc.errno == errno.ENOSPC:
        return "free some space on its disk"
    return "mount a writable folder there"


def folder_problems(settings: Settings) -> list[str]:
    """One line per folder the worker cannot write; a folder inside one already named is not named again (the
    image's LOCAL_OUTPUT_DIR is inside STATE_DIR: one read-only mount, one line)."""
    problems: list[str] = []
    refused: list[Path] = []
    for name, folder in written_folders(settings):
        path = Path(folder).expanduser().absolute()
        if any(path.is_relative_to(parent) for parent in refused):
            continue
        line = folder_problem(name, path)
        if line:
            problems.append(line)
            refused.append(path)
    return problems
