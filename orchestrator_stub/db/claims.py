"""The worker's side of the store: claims, leases, heartbeats and status transitions.

Job statuses: queued → claimed → running → completed | failed. A cancelled job is `failed` with
error code `cancelled`. A held job goes back to `queued` when its lease runs out or its worker reports a
retryable failure, while attempts remain; each such requeue is kept in `requeues`. Every method expires
due leases first, so a lease is lost exactly when it runs out, whatever the sweeper's timing.

Attempt secrets (protocol v1.2): a claim that asks for one gets a fresh random secret; only its SHA-256 is
stored. From then on a status or a heartbeat about that attempt counts only with the secret: the worker id
and the attempt number are public (the job view shows them), the secret is known to the holder alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from orchestrator_stub.db.base import MAX_GPU_NAME_CHARS, MAX_MESSAGE_CHARS, StoreBase, clip, log
from orchestrator_stub.db.events import CLAIMED, DISPATCHED, PROGRESS, RUNNING
from orchestrator_stub.db.schema import DISPATCHER_ID, FINAL, HELD, HELD_SQL, dumps
from orchestrator_stub.leases import failure_requeues
from worker_app_fastwan.core.protocol import Capabilities, HeartbeatRequest, ProgressUpdate


class StatusOutcome(str, Enum):
    applied = "applied"
    requeued = "requeued"  # a retryable failure with attempts left: the job is queued again
    duplicate = "duplicate"  # the same final status from the same worker again
    conflict = "conflict"  # the worker does not hold the job (any more)
    stale = "stale"  # v1.1: the report names an attempt that is not the job's current one
    forbidden = "forbidden"  # v1.2: the attempt was claimed with a secret, and the report lacks it (or has another)
    missing = "missing"


class LeaseState(str, Enum):
    held = "held"
    cancel = "cancel"  # still held, and a cancel was requested
    lost = "lost"


@dataclass(frozen=True)
class Claimed:
    job_id: str
    input: dict[str, Any]
    attempt: int
    attempt_secret: str | None = field(default=None, repr=False)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def proves(stored_hash: str | None, secret: str | None) -> bool:
    """Whether `secret` proves the attempt whose secret hash is `stored_hash` (no hash: nothing to prove)."""
    if stored_hash is None:
        return True
    return secret is not None and hmac.compare_digest(secret_hash(secret), stored_hash)


class ClaimsMixin(StoreBase):
    """Claims, heartbeats, status reports, progress and leases."""

    def claim(self, worker_id: str, gpu_class: str, caps: Capabilities, *, with_secret: bool = False) -> Claimed | None:
        """Hand the oldest queued job this worker can run to it, or None; `with_secret`: with an attempt secret."""
        now = self._clock()
        modes = list(dict.fromkeys(caps.modes))
        with self._tx() as (db, finals):
            self._expire(db, finals, now)
            self._touch_worker(db, worker_id, gpu_class, now)
            if not modes:
                return None
            row = db.execute(
                f"SELECT job_id, input, attempt FROM jobs WHERE status = 'queued'"
                f" AND mode IN ({', '.join('?' * len(modes))}) AND width <= ? AND height <= ? AND num_frames <= ?"
                " ORDER BY seq LIMIT 1",
                (*modes, caps.max_width, caps.max_height, caps.max_frames),
            ).fetchone()
            if row is None:
                return None
            secret = secrets.token_urlsafe(32) if with_secret else None
            db.execute(
                "UPDATE jobs SET status = 'claimed', worker_id = ?, attempt = attempt + 1, lease_expires_at = ?,"
                " stage = 'queued', progress = 0, step = NULL, total_steps = NULL, message = NULL, updated_at = ?,"
                " attempt_secret_hash = ? WHERE job_id = ?",
                (worker_id, now + self.lease_seconds, now, secret and secret_hash(secret), row["job_id"]),
            )
            db.execute("UPDATE workers SET job_id = ? WHERE worker_id = ?", (row["job_id"], worker_id))
            self._emit(db, row["job_id"], DISPATCHED if worker_id == DISPATCHER_ID else CLAIMED, now)
        log.info(
            "job claimed",
            extra={
                "job_id": row["job_id"],
                "worker_id": worker_id,
                "attempt": row["attempt"] + 1,
                "attempt_secret": secret is not None,
            },
        )
        return Claimed(row["job_id"], json.loads(row["input"]), row["attempt"] + 1, secret)

    def heartbeat(self, worker_id: str, beat: HeartbeatRequest) -> list[str] | None:
        """Record the beat, renew the lease of every job it names; returns the job ids this worker should cancel.

        It names `job_id` (generating now) and, from v1.1 workers, `job_ids` (every job the worker holds).
        None (and nothing recorded): it names a job this worker holds under an attempt secret without that secret
        (v1.2), so it is not that worker's beat: anyone can name a worker id.
        """
        now = self._clock()
        named = list(dict.fromkeys(([beat.job_id] if beat.job_id else []) + beat.job_ids))
        with self._tx() as (db, finals):
            self._expire(db, finals, now)
            if not self._beat_proves(db, worker_id, named, beat.attempt_secrets):
                return None
            self._touch_worker(db, worker_id, beat.gpu_class, now)
            db.execute(
                "UPDATE workers SET state = ?, job_id = ?, stage = ?, progress = ?, gpu = ?, last_heartbeat = ?"
                " WHERE worker_id = ?",
                (
                    beat.state,
                    beat.job_id,
                    beat.stage.value if beat.stage else None,
                    beat.progress,
                    dumps(beat.gpu.model_dump() | {"name": clip(beat.gpu.name, MAX_GPU_NAME_CHARS)}),
                    now,
                    worker_id,
                ),
            )
            cancel = [
                row["job_id"]
                for row in db.execute(
                    f"SELECT job_id FROM jobs WHERE worker_id = ? AND status IN {HELD_SQL} AND cancel_requested = 1",
                    (worker_id,),
                )
            ]
            for job_id in named:
                if not self._renew(db, job_id, worker_id, now) and self._lost(db, job_id, worker_id):
                    cancel.append(job_id)
        return list(dict.fromkeys(cancel))

    @staticmethod
    def _beat_proves(db: Any, worker_id: str, named: list[str], given: dict[str, str]) -> bool:
        """Every named job this worker holds under a secret comes with that secret. Jobs it no longer holds need
        none: the beat only learns to stop them."""
        if not named:
            return True
        rows = db.execute(
            f"SELECT job_id, attempt_secret_hash FROM jobs WHERE worker_id = ? AND status IN {HELD_SQL}"
            f" AND attempt_secret_hash IS NOT NULL AND job_id IN ({', '.join('?' * len(named))})",
            (worker_id, *named),
        ).fetchall()
        return all(proves(row["attempt_secret_hash"], given.get(row["job_id"])) for row in rows)

    def apply_status(
        self,
        job_id: str,
        worker_id: str,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        *,
        attempt: int | None = None,
        secret: str | None = None,
        requeue_retryable: bool = True,
    ) -> StatusOutcome:
        """Apply a worker's running/completed/failed report, if that worker still holds the job.

        With `attempt` (v1.1) the report must also be about the job's current attempt: a late report of an
        earlier attempt is `stale`, even from the worker that holds the job again. An attempt claimed with a
        secret (v1.2) takes reports with that secret only, final or not: anything else is `forbidden` and
        changes nothing, so a forged report can neither finish the job nor make the holder's a duplicate. A
        retryable failure sends
        the job back to the queue while attempts remain; a caller that already retried on its own (the
        dispatcher) passes `requeue_retryable=False` to make its failure final.
        """
        now = self._clock()
        with self._tx() as (db, finals):
            self._expire(db, finals, now)
            row = db.execute(
                "SELECT status, worker_id, final_by, attempt, cancel_requested, attempt_secret_hash FROM jobs"
                " WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                return StatusOutcome.missing
            if attempt is not None and attempt != row["attempt"]:
                return StatusOutcome.stale
            if not proves(row["attempt_secret_hash"], secret):
                return StatusOutcome.forbidden
            if row["status"] in FINAL:
                same = row["status"] == status and row["final_by"] == worker_id
                return StatusOutcome.duplicate if same else StatusOutcome.conflict
            if row["status"] not in HELD or row["worker_id"] != worker_id:
                return StatusOutcome.conflict
            if status == "running":
                db.execute(
                    "UPDATE jobs SET status = 'running', lease_expires_at = ?, updated_at = ? WHERE job_id = ?",
                    (now + self.lease_seconds, now, job_id),
                )
                if row["status"] != "running":  # a repeated `running` renews the lease, and is no news
                    self._emit(db, job_id, RUNNING, now)
                return StatusOutcome.applied
            if (
                error is not None
                and requeue_retryable
                and failure_requeues(error, row["attempt"], bool(row["cancel_requested"]), self._max_attempts)
            ):
                self._requeue(db, job_id, row["attempt"], worker_id, error, now)
                return StatusOutcome.requeued
            self._finish(db, finals, job_id, status, result, error, worker_id, now)
        return StatusOutcome.applied

    def record_progress(self, job_id: str, update: ProgressUpdate) -> bool:
        """Store a progress report from the job's holder; False when ignored (unknown, not held, not the holder).

        A worker whose lease ran out may still report for a while; its numbers must not overwrite those of
        the worker that holds the job now. Jobs the dispatcher holds are the exception: the queue-mode
        worker it fed reports under its own id, which the stub never learns.
        """
        now = self._clock()
        report = (
            update.stage.value,
            update.progress,
            update.step,
            update.total_steps,
            clip(update.message, MAX_MESSAGE_CHARS) or None,
        )
        with self._tx() as (db, _):
            row = db.execute(
                "SELECT stage, progress, step, total_steps, message FROM jobs"
                f" WHERE job_id = ? AND status IN {HELD_SQL} AND worker_id IN (?, ?)",
                (job_id, update.worker_id, DISPATCHER_ID),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "UPDATE jobs SET stage = ?, progress = ?, step = ?, total_steps = ?, message = ?, updated_at = ?"
                " WHERE job_id = ?",
                (*report, now, job_id),
            )
            if tuple(row) != report:  # the worker repeats itself between steps: only a change is an event
                self._emit(db, job_id, PROGRESS, now)
            return True

    def renew_lease(self, job_id: str, worker_id: str) -> LeaseState:
        """The dispatcher's renewal (in-process: it needs no secret)."""
        now = self._clock()
        with self._tx() as (db, finals):
            self._expire(db, finals, now)
            if not self._renew(db, job_id, worker_id, now):
                return LeaseState.lost
            row = db.execute("SELECT cancel_requested FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            return LeaseState.cancel if row["cancel_requested"] else LeaseState.held

    def expire_leases(self) -> None:
        """The sweeper's pass: due leases, and workers unheard of for too long."""
        now = self._clock()
        with self._tx() as (db, finals):
            self._expire(db, finals, now)
            self._prune_workers(db, now)

    def restart_held_leases(self) -> int:
        """Make every held lease run out `lease_seconds` from now; returns how many. Called at start-up.

        While the stub was down no worker could renew its lease, so the stored expiry times would take jobs
        from workers that were still working (and throw their results away with a 409).
        """
        with self._tx() as (db, _):
            cur = db.execute(
                f"UPDATE jobs SET lease_expires_at = ? WHERE status IN {HELD_SQL}",
                (self._clock() + self.lease_seconds,),
            )
            return cur.rowcount
