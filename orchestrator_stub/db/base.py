"""The store's transactions, the change notices they send, and the state changes several operations share.

Every public method of `Store` is one transaction (`engine.Database.transaction`). The helpers here run inside
one: expiring leases, requeueing and finishing a job are reached from claims, heartbeats, status reports and
cancels alike, so they are stated once, below the mixins that use them.

Every change of a job also writes an event (`events.py`: the log that streams and webhooks are made from), in
the same transaction.

Change notices: a job that became claimable (a waiting claim may take it), events written (streams read
again) and a webhook that became due (a sender looks) are announced once the transaction commits: to this
process's listeners directly, and on PostgreSQL also with NOTIFY (sent at commit, so never for a change that
was rolled back), which the other replicas' listeners (`notify.Listener`) pass to theirs.

Every attempt is kept in `attempts` from its claim to its end (`attempts.py`: completed, failed, requeued,
expired, cancelled), with whether the ending counts against the worker: quarantine and the claim and
lease-expiry counters read it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import RowMapping

from orchestrator_stub.db import attempts, events, migrate
from orchestrator_stub.db.attempts import Quarantine
from orchestrator_stub.db.engine import Database, Tx
from orchestrator_stub.db.events import QUEUED, final_event_type
from orchestrator_stub.db.schema import DISPATCHER_ID, HELD_SQL, Queued, dumps, loads
from orchestrator_stub.leases import Expiry, expiry_error, expiry_outcome

# The name the store logged under before it was split: log filters and tests keep working.
log = logging.getLogger("orchestrator_stub.db")

# What a worker may say about itself is shown on the page and in /v1/queue: kept short, whatever it sends.
MAX_GPU_CLASS_CHARS = 64
MAX_GPU_NAME_CHARS = 128
MAX_MESSAGE_CHARS = 2000  # a progress message or a worker's error message, as stored and shown
ALL_ROWS = 2**62  # LIMIT for "no limit" with an OFFSET: SQLite needs a LIMIT there, PostgreSQL takes no -1
QUEUED_CHANNEL = "stub_queued"
EVENTS_CHANNEL = "stub_events"
WEBHOOKS_CHANNEL = "stub_webhooks"
SUBMIT_LOCK = 0x57_1B_DB_01  # PostgreSQL advisory lock: submissions one at a time (the queue cap, Idempotency-Key)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StoreBase:
    """The database, the change notices, and the shared transitions; `Store` adds the operations."""

    def __init__(
        self,
        database: str | Path | Database,
        *,
        lease_seconds: float,
        max_attempts: int,
        on_queued: Callable[[Queued], None] | None = None,
        on_event: Callable[[], None] | None = None,
        on_webhook: Callable[[], None] | None = None,
        clock: Callable[[], float] | None = None,
        max_queued_jobs: int | None = None,
        max_workers: int = 1000,
        worker_retention_s: float = 24 * 3600.0,
        retry_elsewhere_s: float = 0.0,
        quarantine_after: int = 3,
        quarantine_s: float = 600.0,
        webhook_progress_s: float = 10.0,
    ) -> None:
        self.db = database if isinstance(database, Database) else Database(database)
        self.revision = migrate.upgrade(self.db)
        self.lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self.max_queued_jobs = max_queued_jobs
        self._max_workers = max_workers
        self._worker_retention_s = worker_retention_s
        self.retry_elsewhere_s = retry_elsewhere_s
        self.quarantine = Quarantine(quarantine_after, quarantine_s)
        self.webhook_progress_s = webhook_progress_s
        self._on_queued = on_queued
        self._on_event = on_event  # events were written: streams may read again (event_hub.py)
        self._on_webhook = on_webhook  # a webhook delivery became due: the sender may look
        self._clock = clock  # None: the database's clock (PostgreSQL) or this process's (SQLite)

    @property
    def backend(self) -> str:
        return self.db.backend

    def close(self) -> None:
        self.db.dispose()

    def now(self) -> float:
        """The time leases and `updated_at` are measured in (an injected clock, else the database's)."""
        return self._clock() if self._clock is not None else self.db.now()

    def subscribe(
        self,
        on_queued: Callable[[Queued], None] | None = None,
        on_event: Callable[[], None] | None = None,
        on_webhook: Callable[[], None] | None = None,
    ) -> None:
        """Where change notices go (set once the app's loop runs; none: stop sending them)."""
        self._on_queued, self._on_event, self._on_webhook = on_queued, on_event, on_webhook

    def announce_event(self) -> None:
        if self._on_event is not None:
            self._on_event()

    def announce_webhook(self) -> None:
        if self._on_webhook is not None:
            self._on_webhook()

    def announce_queued(self, queued: Queued | None) -> None:
        """None: anything may have been queued (notices were missed while the listener reconnected)."""
        if self._on_queued is not None:
            self._on_queued(queued)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Tx]:
        """One write transaction; the change notices it collected go out once it committed."""
        with self.db.transaction(self._clock) as tx:
            yield tx
            events.write(tx, progress_every_s=self.webhook_progress_s, postgres=self.db.postgres)
            if self.db.postgres:  # delivered at COMMIT, to every replica's listener (this one's skips its own)
                for queued in tx.queued:
                    tx.run("SELECT pg_notify(:channel, :payload)", channel=QUEUED_CHANNEL, payload=queued.payload())
                if tx.events:
                    tx.run("SELECT pg_notify(:channel, '')", channel=EVENTS_CHANNEL)
                if tx.webhooks:
                    tx.run("SELECT pg_notify(:channel, '')", channel=WEBHOOKS_CHANNEL)
        # Outside the transaction: the listener sees the committed row.
        for queued in tx.queued:
            self.announce_queued(queued)
        if tx.events:
            self.announce_event()
        if tx.webhooks:
            self.announce_webhook()

    def _rows(self, sql: str, **params: Any) -> Sequence[RowMapping]:
        with self.db.reading(self._clock) as tx:
            return tx.rows(sql, **params)

    # ---- helpers (inside a transaction) ---------------------------------------------------------

    @staticmethod
    def _emit(tx: Tx, job_id: str, event_type: str, extra: dict[str, Any] | None = None) -> None:
        """Log an event of the job (after its change, in the same transaction); see `events.emit`."""
        events.emit(tx, job_id, event_type, extra)

    def _touch_worker(self, tx: Tx, worker_id: str, gpu_class: str, job_id: str | None = None) -> None:
        """Record that the worker was heard from (and, after a claim, the job it took)."""
        first_seen = tx.scalar(
            "INSERT INTO workers (worker_id, gpu_class, first_seen, last_seen, job_id) VALUES (:w, :g, :now, :now, :j)"
            " ON CONFLICT (worker_id) DO UPDATE SET gpu_class = excluded.gpu_class, last_seen = excluded.last_seen,"
            " job_id = COALESCE(excluded.job_id, workers.job_id) RETURNING first_seen",
            w=worker_id,
            g=clip(gpu_class, MAX_GPU_CLASS_CHARS),
            now=tx.now,
            j=job_id,
        )
        if first_seen == tx.now:  # only a new worker can push the table past its cap: made-up ids cost no more
            self._prune_workers(tx)

    def _prune_workers(self, tx: Tx) -> None:
        """Forget workers unheard of for `worker_retention_s`, then the least recently heard past `max_workers`.

        Rows another replica's transaction holds are skipped, never waited for (no deadlock): the next prune
        takes them."""
        skip = self.db.skip_locked
        tx.run(
            f"DELETE FROM workers WHERE worker_id IN (SELECT worker_id FROM workers WHERE last_seen < :before{skip})",
            before=tx.now - self._worker_retention_s,
        )
        # The rows past the cap are chosen without locks, then those not held elsewhere are deleted: a locking
        # subquery with an OFFSET would lock every row it passes, and every new worker's claim would wait on it.
        over = tx.rows(
            "SELECT worker_id FROM workers ORDER BY last_seen DESC, worker_id LIMIT :all OFFSET :keep",
            all=ALL_ROWS,
            keep=self._max_workers,
        )
        if over:
            tx.run(
                f"DELETE FROM workers WHERE worker_id IN (SELECT worker_id FROM workers WHERE worker_id IN :ids{skip})",
                ids=[row["worker_id"] for row in over],
            )

    def _renew(self, tx: Tx, job_id: str, worker_id: str) -> bool:
        return (
            tx.count(
                "UPDATE jobs SET lease_expires_at = :until"
                f" WHERE job_id = :j AND worker_id = :w AND status IN {HELD_SQL}",
                until=tx.now + self.lease_seconds,
                j=job_id,
                w=worker_id,
            )
            > 0
        )

    def _lost(self, tx: Tx, job_id: str, worker_id: str) -> bool:
        """A job the worker still works on but no longer holds (its lease ran out): it should stop."""
        row = tx.row("SELECT final_by FROM jobs WHERE job_id = :j", j=job_id)
        # Not for a job this worker itself just finished: its heartbeat may simply predate its status call.
        return row is not None and row["final_by"] != worker_id

    def _expire(self, tx: Tx) -> None:
        # SKIP LOCKED: a lease another replica is expiring (or a worker is renewing) right now is theirs.
        rows = tx.rows(
            "SELECT job_id, attempt, cancel_requested, worker_id FROM jobs"
            f" WHERE status IN {HELD_SQL} AND lease_expires_at <= :now ORDER BY seq{self.db.skip_locked}",
            now=tx.now,
        )
        for row in rows:
            outcome = expiry_outcome(row["attempt"], bool(row["cancel_requested"]), self._max_attempts)
            log.warning(
                "lease expired",
                extra={
                    "job_id": row["job_id"],
                    "worker_id": row["worker_id"],
                    "attempt": row["attempt"],
                    "outcome": outcome.value,
                },
            )
            error = expiry_error(outcome, row["attempt"], self.lease_seconds)
            ended = "cancelled" if outcome is Expiry.cancelled else "expired"
            self._end_attempt(tx, row["job_id"], row["attempt"], row["worker_id"], ended, error)
            if outcome is Expiry.requeue:
                self._requeue(tx, row["job_id"], row["attempt"], row["worker_id"], error)
            else:
                self._finish(tx, row["job_id"], "failed", None, error, None)

    def _requeue(self, tx: Tx, job_id: str, attempt: int, worker_id: str | None, error: dict[str, Any]) -> None:
        """Back to the queue (the next claim is attempt + 1), keeping why this attempt ended. No webhook: not final.

        The worker it failed on is passed over for `retry_elsewhere_s`: another worker claiming meanwhile gets it
        (a bad box must not take the same job straight back), and after that anyone may, that worker too."""
        avoid = worker_id if worker_id not in (None, DISPATCHER_ID) and self.retry_elsewhere_s > 0 else None
        if avoid is not None and not attempts.others_seen(tx, avoid):
            avoid = None  # nobody else could take it: passing it over would only make the job wait
        shape = tx.row(
            "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, stage = 'queued',"
            " progress = 0, step = NULL, total_steps = NULL, message = NULL, updated_at = :now,"
            " avoid_worker_id = :avoid, avoid_until = :until WHERE job_id = :j"
            " RETURNING mode, width, height, num_frames",
            now=tx.now,
            avoid=avoid,
            until=tx.now + self.retry_elsewhere_s if avoid else None,
            j=job_id,
        )
        tx.run(
            "INSERT INTO requeues (job_id, attempt, worker_id, at, error) VALUES (:j, :a, :w, :now, :e)",
            j=job_id,
            a=attempt,
            w=worker_id,
            now=tx.now,
            e=dumps(error),
        )
        if shape is not None:
            tx.queued.append(Queued(job_id, shape["mode"], shape["width"], shape["height"], shape["num_frames"]))
        self._emit(tx, job_id, QUEUED, {"requeued": True, "last_error": error})
        log.info(
            "job requeued",
            extra={"job_id": job_id, "worker_id": worker_id, "attempt": attempt, "error_code": error.get("code")},
        )

    def _finish(
        self,
        tx: Tx,
        job_id: str,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        final_by: str | None,
    ) -> None:
        """Make a job final; its final event, and the webhook it asked for, are written in the same transaction,
        so none is ever skipped. `webhook_state` follows the final webhook (`pending`, then `delivered` or
        `gave_up`); a job that asked for none has none."""
        event_type = final_event_type(status, error)
        hooks = tx.row("SELECT notify_url, notify_events FROM jobs WHERE job_id = :j", j=job_id)
        wants = (
            hooks is not None
            and hooks["notify_url"] is not None
            and events.WEBHOOK_TYPES[event_type] in events.wanted_webhooks(hooks["notify_events"])
        )
        tx.run(
            "UPDATE jobs SET status = :s, result = :r, error = :e, final_by = :by, lease_expires_at = NULL,"
            " progress = CASE WHEN :done = 1 THEN 1.0 ELSE progress END, webhook_state = :hook,"
            " avoid_worker_id = NULL, avoid_until = NULL, completed_at = :now, updated_at = :now WHERE job_id = :j",
            hook="pending" if wants else None,
            s=status,
            done=int(status == "completed"),
            r=dumps(result),
            e=dumps(error),
            by=final_by,
            now=tx.now,
            j=job_id,
        )
        self._emit(tx, job_id, event_type, {"result": result} if status == "completed" else {"error": error})
        log.info("job final", extra={"job_id": job_id, "status": status, "error_code": (error or {}).get("code")})

    def _end_attempt(
        self, tx: Tx, job_id: str, attempt: int, worker_id: str | None, outcome: str, error: dict[str, Any] | None
    ) -> None:
        """Record how an attempt ended; a failure of the box that puts its worker in quarantine is logged."""
        if attempts.end(tx, job_id, attempt, outcome, error) and worker_id and worker_id != DISPATCHER_ID:
            if (stuck := self.quarantine.of(tx, worker_id)) is not None:
                log.warning(
                    "worker quarantined",
                    extra={"worker_id": worker_id, "failures_in_a_row": stuck[0], "for_s": self.quarantine.seconds},
                )

    @staticmethod
    def _job_dict(row: RowMapping) -> dict[str, Any]:
        job = dict(row)
        for key in ("input", "result", "error"):
            job[key] = loads(job[key])
        job["cancel_requested"] = bool(job["cancel_requested"])
        return job
