"""Who this worker is to the orchestrator: its worker id (kept across restarts) and its GPU class."""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import socket

from worker_app_fastwan.core.devices import DeviceInfo
from worker_app_fastwan.core.durable import write_durably
from worker_app_fastwan.core.schema import ID_PATTERN
from worker_app_fastwan.core.settings import Settings

log = logging.getLogger(__name__)


def normalise_gpu_name(name: str) -> str:
    """ "NVIDIA H100 80GB HBM3" → "nvidia-h100-80gb-hbm3"; "" → "cpu"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64] or "cpu"


def gpu_class(settings: Settings, device: DeviceInfo | None) -> str:
    """GPU_CLASS when set, else the card's normalised name ("unknown" until the GPU process reported it)."""
    if settings.GPU_CLASS:
        return settings.GPU_CLASS
    return "unknown" if device is None else normalise_gpu_name(device.name)


def resolve_worker_id(settings: Settings) -> str:
    """BUFFER_WORKER_ID, else an id made once and kept in STATE_DIR/worker_id.

    It must survive restarts: a final status waiting in the outbox is only accepted from the worker that
    holds the job. Blocking (it may write and fsync the file): call it in a thread from async code.
    """
    if settings.BUFFER_WORKER_ID:
        return settings.BUFFER_WORKER_ID
    path = settings.STATE_DIR / "worker_id"
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_text(encoding="utf-8").strip()
        if re.fullmatch(ID_PATTERN, kept):
            return kept
        log.warning("ignoring an invalid worker id on disk", extra={"path": str(path)})
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip("-.")[:64] or "host"
    worker_id = f"fastwan-{host}-{secrets.token_hex(4)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, f"{worker_id}\n".encode())
    return worker_id
