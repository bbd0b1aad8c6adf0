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

from orchestrator_stub.db import attempts
from orchestrator_stub.db.base import MAX_GPU_NAME_CHARS, MAX_MESSAGE_CHARS, StoreBase, clip, log
from orchestrator_stub.db.engine import Tx
from orchestrator_stub.db.events import CLAIMED, DISPATCHED, PROGRESS, QUEUED, RUNNING
from orchestrator_stub.db.schema import DISPATCHER_ID, FINAL, HELD, HELD_SQL, Queued, dumps
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


@dataclass(frozen=True)
class ClaimAnswer:
    """A claim's outcome: the job, or why none (`quarantined_until`), and when a job passed over for this worker
    (retry elsewhere) becomes its to take (`retry_at`): a waiting claim need not wait longer than that."""

    job: Claimed | None
    quarantined_until: float | None = None
    streak: int = 0
    retry_at: float | None = None


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
        return self.claim_for(worker_id, gpu_class, caps, with_secret=with_secret).job

    def claim_for(
        self, worker_id: str, gpu_class: str, caps: Capabilities, *, with_secret: bool = False
    ) -> ClaimAnswer:
        """`claim`, with the reasons a worker got nothing: in quarantine, or only jobs passed over for it queued.

        The oldest fitting job is taken with `FOR UPDATE SKIP LOCKED` on PostgreSQL: two replicas' claims at
        the same moment each get another job (or none), never the same one."""
        modes: list[str] = list(dict.fromkeys(caps.modes))
        with self._tx() as tx:
            self._expire(tx)
            if worker_id != DISPATCHER_ID and (stuck := self.quarantine.of(tx, worker_id)) is not None:
                self._touch_worker(tx, worker_id, gpu_class)
                return ClaimAnswer(None, quarantined_until=stuck[1], streak=stuck[0])
            fits = "mode IN :modes AND width <= :w AND height <= :h AND num_frames <= :f"
            shape = {"modes": modes or [""], "w": caps.max_width, "h": caps.max_height, "f": caps.max_frames}
            row = tx.row(
                f"SELECT job_id, input, attempt FROM jobs WHERE status = 'queued' AND {fits}"
                " AND (avoid_worker_id IS NULL OR avoid_worker_id <> :me OR avoid_until <= :now)"
                f" ORDER BY seq LIMIT 1{self.db.skip_locked}",
                me=worker_id,
                now=tx.now,
                **shape,
            )
            self._touch_worker(tx, worker_id, gpu_class, row["job_id"] if row else None)
            if row is None:
                retry_at = tx.scalar(
                    f"SELECT MIN(avoid_until) FROM jobs WHERE status = 'queued' AND {fits}"
                    " AND avoid_worker_id = :me AND avoid_until > :now",
                    me=worker_id,
                    now=tx.now,
                    **shape,
                )
                return ClaimAnswer(None, retry_at=retry_at)
            attempt = row["attempt"] + 1
            secret = secrets.token_urlsafe(32) if with_secret else None
            tx.run(
                "UPDATE jobs SET status = 'claimed', worker_id = :w, attempt = :a, lease_expires_at = :until,"
                " stage = 'queued', progress = 0, step = NULL, total_steps = NULL, message = NULL, updated_at = :now,"
                " attempt_secret_hash = :hash, avoid_worker_id = NULL, avoid_until = NULL WHERE job_id = :j",
                w=worker_id,
                a=attempt,
                until=tx.now + self.lease_seconds,
                now=tx.now,
                hash=secret and secret_hash(secret),
                j=row["job_id"],
            )
            attempts.start(tx, row["job_id"], attempt, worker_id)
            self._emit(tx, row["job_id"], DISPATCHED if worker_id == DISPATCHER_ID else CLAIMED)
        log.info(
            "job claimed",
            extra={
                "job_id": row["job_id"],
                "worker_id": worker_id,
                "attempt": attempt,
                "attempt_secret": secret is not None,
            },
        )
        return ClaimAnswer(Claimed(row["job_id"], json.loads(row["input"]), attempt, secret))

    def release(self, job_id: str, worker_id: str, attempt: int) -> bool:
        """Undo a claim whose answer never reached its worker (it hung up while its claim waited): the job goes
        back to the queue as it was, the attempt not counted. False when the claim is no longer as it was."""
        with self._tx() as tx:
            shape = tx.row(
                "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, attempt = attempt - 1,"
                " attempt_secret_hash = NULL, updated_at = :now"
                " WHERE job_id = :j AND worker_id = :w AND attempt = :a AND status = 'claimed'"
                " RETURNING mode, width, height, num_frames",
                now=tx.now,
                j=job_id,
                w=worker_id,
                a=attempt,
            )
            if shape is None:
                return False
            tx.run("DELETE FROM attempts WHERE job_id = :j AND attempt = :a", j=job_id, a=attempt)
            tx.queued.append(Queued(job_id, shape["mode"], shape["width"], shape["height"], shape["num_frames"]))
            self._emit(tx, job_id, QUEUED, {"released": True})
        log.info("claim released: the worker hung up", extra={"job_id": job_id, "worker_id": worker_id})
        return True

    def heartbeat(self, worker_id: str, beat: HeartbeatRequest) -> list[str] | None:
        """Record the beat, renew the lease of every job it names; returns the job ids this worker should cancel.

        It names `job_id` (generating now) and, from v1.1 workers, `job_ids` (every job the worker holds).
        None (and nothing recorded): it names a job this worker holds under an attempt secret without that secret
        (v1.2), so it is not that worker's beat: anyone can name a worker id.
        """
        named = list(dict.fromkeys(([beat.job_id] if beat.job_id else []) + beat.job_ids))
        with self._tx() as tx:
            self._expire(tx)
            if not self._beat_proves(tx, worker_id, named, beat.attempt_secrets):
                return None
            self._touch_worker(tx, worker_id, beat.gpu_class)
            tx.run(
                "UPDATE workers SET state = :state, job_id = :j, stage = :stage, progress = :p, gpu = :gpu,"
                " last_heartbeat = :now WHERE worker_id = :w",
                state=beat.state,
                j=beat.job_id,
                stage=beat.stage.value if beat.stage else None,
                p=beat.progress,
                gpu=dumps(beat.gpu.model_dump() | {"name": clip(beat.gpu.name, MAX_GPU_NAME_CHARS)}),
                now=tx.now,
                w=worker_id,
            )
            cancel = [
                row["job_id"]
                for row in tx.rows(
                    f"SELECT job_id FROM jobs WHERE worker_id = :w AND status IN {HELD_SQL} AND cancel_requested = 1",
                    w=worker_id,
                )
            ]
            for job_id in named:
                if not self._renew(tx, job_id, worker_id) and self._lost(tx, job_id, worker_id):
                    cancel.append(job_id)
        return list(dict.fromkeys(cancel))

    @staticmethod
    def _beat_proves(tx: Tx, worker_id: str, named: list[str], given: dict[str, str]) -> bool:
        """Every named job this worker holds under a secret comes with that secret. Jobs it no longer holds need
        none: the beat only learns to stop them."""
        if not named:
            return True
        rows = tx.rows(
            f"SELECT job_id, attempt_secret_hash FROM jobs WHERE worker_id = :w AND status IN {HELD_SQL}"
            " AND attempt_secret_hash IS NOT NULL AND job_id IN :named",
            w=worker_id,
            named=named,
        )
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
        with self._tx() as tx:
            self._expire(tx)
            row = tx.row(
                "SELECT status, worker_id, final_by, attempt, cancel_requested, attempt_secret_hash FROM jobs"
                f" WHERE job_id = :j{self.db.for_update}",
                j=job_id,
            )
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
                tx.run(
                    "UPDATE jobs SET status = 'running', lease_expires_at = :until, updated_at = :now"
                    " WHERE job_id = :j",
                    until=tx.now + self.lease_seconds,
                    now=tx.now,
                    j=job_id,
                )
                if row["status"] != "running":  # a repeated `running` renews the lease, and is no news
                    self._emit(tx, job_id, RUNNING)
                return StatusOutcome.applied
            if (
                error is not None
                and requeue_retryable
                and failure_requeues(error, row["attempt"], bool(row["cancel_requested"]), self._max_attempts)
            ):
                self._end_attempt(tx, job_id, row["attempt"], worker_id, "requeued", error)
                self._requeue(tx, job_id, row["attempt"], worker_id, error)
                return StatusOutcome.requeued
            ended = "cancelled" if (error or {}).get("code") == "cancelled" else status
            self._end_attempt(tx, job_id, row["attempt"], worker_id, ended, error)
            self._finish(tx, job_id, status, result, error, worker_id)
        return StatusOutcome.applied

    def record_progress(self, job_id: str, update: ProgressUpdate) -> bool:
        """Store a progress report from the job's holder; False when ignored (unknown, not held, not the holder).

        A worker whose lease ran out may still report for a while; its numbers must not overwrite those of
        the worker that holds the job now. Jobs the dispatcher holds are the exception: the queue-mode
        worker it fed reports under its own id, which the stub never learns.
        """
        report = {
            "stage": update.stage.value,
            "progress": update.progress,
            "step": update.step,
            "total_steps": update.total_steps,
            "message": clip(update.message, MAX_MESSAGE_CHARS) or None,
        }
        with self._tx() as tx:
            row = tx.row(
                "SELECT stage, progress, step, total_steps, message FROM jobs"
                f" WHERE job_id = :j AND status IN {HELD_SQL} AND worker_id IN (:w, :dispatcher){self.db.for_update}",
                j=job_id,
                w=update.worker_id,
                dispatcher=DISPATCHER_ID,
            )
            if row is None:
                return False
            tx.run(
                "UPDATE jobs SET stage = :stage, progress = :progress, step = :step, total_steps = :total_steps,"
                " message = :message, updated_at = :now WHERE job_id = :j",
                now=tx.now,
                j=job_id,
                **report,
            )
            if dict(row) != report:  # the worker repeats itself between steps: only a change is an event
                self._emit(tx, job_id, PROGRESS)
            return True

    def renew_lease(self, job_id: str, worker_id: str) -> LeaseState:
        """The dispatcher's renewal (in-process: it needs no secret)."""
        with self._tx() as tx:
            self._expire(tx)
            if not self._renew(tx, job_id, worker_id):
                return LeaseState.lost
            row = tx.row("SELECT cancel_requested FROM jobs WHERE job_id = :j", j=job_id)
            return LeaseState.cancel if row and row["cancel_requested"] else LeaseState.held

    def expire_leases(self) -> None:
        """The sweeper's pass (every replica runs one): due leases, and workers unheard of for too long."""
        with self._tx() as tx:
            self._expire(tx)
            self._prune_workers(tx)

    def restart_held_leases(self) -> int:
        """Make every held lease run out `lease_seconds` from now at the earliest; returns how many. Called at
        start-up.

        While the stub was down no worker could renew its lease, so the stored expiry times would take jobs
        from workers that were still working (and throw their results away with a 409). With replicas, one
        starting while the others serve only pushes back leases that would run out sooner anyway.
        """
        with self._tx() as tx:
            return tx.count(
                f"UPDATE jobs SET lease_expires_at = :until WHERE status IN {HELD_SQL} AND lease_expires_at < :until",
                until=tx.now + self.lease_seconds,
            )
