"""The on-disk outbox of final job statuses: a result is never lost to a crash, a restart or an outage.

A final `StatusUpdate` is written to `<STATE_DIR>/outbox/<job_id>.json` before it is sent, and removed only
once the orchestrator answered 200 ("ok") or 409 ("gone": the job is no longer ours, nothing is left to
deliver). Whatever is still there at start-up is delivered before the worker claims anything new.

Writes are atomic (temp file, fsync, `os.replace`, fsync of the folder): after a crash a file is either the
whole update or absent, never half of one. `Outbox` methods block (fsync can take a while on a busy disk),
so the async helpers below run them in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from worker_app_fastwan.core.durable import write_durably
from worker_app_fastwan.core.logs import job_context
from worker_app_fastwan.core.protocol import StatusUpdate
from worker_app_fastwan.core.schema import ID_PATTERN
from worker_app_fastwan.orchestrator.client import OrchestratorRejected

if TYPE_CHECKING:
    from worker_app_fastwan.orchestrator.client import OrchestratorClient

log = logging.getLogger(__name__)

SUFFIX = ".json"
TMP_SUFFIX = ".tmp"
BAD_SUFFIX = ".unreadable"
Delivery = Literal["ok", "gone", "kept"]


@dataclass(frozen=True)
class Entry:
    job_id: str
    update: StatusUpdate


class Outbox:
    """One file per job: a later final status of the same job replaces the earlier one."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        # A crash between the temp file and os.replace leaves a temp file behind. Its update was never
        # sent (put comes first), so the job's lease runs out and the orchestrator hands the job out again.
        for tmp in self.folder.glob(f".*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)

    def path(self, job_id: str) -> Path:
        # The job id becomes a file name; the protocol's alphabet has no "/", but "." and ".." would still hurt.
        if not re.fullmatch(ID_PATTERN, job_id) or job_id in (".", ".."):
            raise ValueError(f"job_id {job_id!r} does not match {ID_PATTERN}")
        return self.folder / f"{job_id}{SUFFIX}"

    def put(self, job_id: str, update: StatusUpdate) -> Path:
        dest = self.path(job_id)
        # An exact mtime: the outbox delivers oldest first.
        data = update.model_dump_json().encode("utf-8")
        write_durably(dest, data, tmp_prefix=f".{dest.stem}.", tmp_suffix=TMP_SUFFIX, exact_mtime=True)
        return dest

    def remove(self, job_id: str) -> None:
        # No folder fsync: a removal lost to a power cut means one more delivery, which is harmless (200 again).
        self.path(job_id).unlink(missing_ok=True)

    def pending(self) -> list[Entry]:
        """Every stored update, oldest first (the order they were written in)."""
        entries = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}"), key=_age_key):
            update = self._load(path)
            if update is not None:
                entries.append(Entry(path.name.removesuffix(SUFFIX), update))
        return entries

    def _load(self, path: Path) -> StatusUpdate | None:
        try:
            self.path(path.name.removesuffix(SUFFIX))  # a name no job id makes (put by a person, say)
            return StatusUpdate.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValidationError, ValueError, OSError) as exc:
            # Only a damaged disk (or a person) makes one. Keep the bytes for a person, out of the delivery
            # path, and say so loudly: a result is never dropped silently.
            aside = path.with_suffix(BAD_SUFFIX)
            with contextlib.suppress(OSError):  # even a file that cannot be moved must not stop the start-up
                os.replace(path, aside)
            log.error("unreadable outbox entry set aside", extra={"path": str(aside), "error": str(exc)[:300]})
            return None


def _age_key(path: Path) -> tuple[int, str]:
    with contextlib.suppress(FileNotFoundError):
        return path.stat().st_mtime_ns, path.name
    return 0, path.name


async def send_final(
    outbox: Outbox,
    client: OrchestratorClient,
    job_id: str,
    update: StatusUpdate,
    on_retry: Callable[[], None] | None = None,
) -> Delivery:
    """Store the final status, then deliver it (retried until 200/409; cancel the task to stop early).
    `on_retry` is called each time a delivery attempt failed and another one is due.

    When the outbox cannot store it (a full disk, an id it refuses), the status is delivered directly: it
    is then lost if this process dies before the orchestrator answers, which beats losing it for sure."""
    try:
        await asyncio.to_thread(outbox.put, job_id, update)
    except (OSError, ValueError) as exc:
        with job_context(job_id):
            log.error("outbox not writable; delivering the final status directly", extra={"error": str(exc)[:300]})
            return await _deliver_directly(client, job_id, update)
    return await deliver(outbox, client, job_id, update, on_retry)


async def _deliver_directly(client: OrchestratorClient, job_id: str, update: StatusUpdate) -> Delivery:
    try:
        outcome = await client.post_status(job_id, update)
    except (OrchestratorRejected, ValueError) as exc:
        log.error("final status refused, and not stored", extra={"status": update.status, "error": str(exc)})
        return "kept"
    log.info("final status delivered", extra={"status": update.status, "outcome": outcome, "stored": False})
    return outcome


async def deliver(
    outbox: Outbox,
    client: OrchestratorClient,
    job_id: str,
    update: StatusUpdate,
    on_retry: Callable[[], None] | None = None,
) -> Delivery:
    """Post a stored status; the file goes once it got 200 or 409. Another 4xx keeps it ("kept") for the
    next start: retrying cannot help now, but a fixed setting (INTERNAL_API_KEY) or orchestrator may."""
    with job_context(job_id):
        try:
            outcome = await client.post_status(job_id, update, on_retry=on_retry)
        except OrchestratorRejected as exc:
            log.error(
                "final status refused; kept in the outbox for the next start",
                extra={"status": update.status, "error": str(exc), "path": str(outbox.path(job_id))},
            )
            return "kept"
        await asyncio.to_thread(outbox.remove, job_id)
        log.info(
            "final status delivered" if outcome == "ok" else "final status refused with 409: job no longer ours",
            extra={"status": update.status, "outcome": outcome},
        )
        return outcome


async def flush(outbox: Outbox, client: OrchestratorClient) -> int:
    """Deliver every stored status, oldest first; returns how many are left on disk (refused ones)."""
    entries = await asyncio.to_thread(outbox.pending)
    if entries:
        log.info("delivering stored final statuses", extra={"count": len(entries)})
    kept = 0
    for entry in entries:
        kept += await deliver(outbox, client, entry.job_id, entry.update) == "kept"
    return kept
