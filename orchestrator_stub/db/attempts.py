"""Every attempt, from its claim to its end, in the `attempts` table; which endings count against the worker;
and the quarantine they lead to. Functions of a transaction (`engine.Tx`): the store calls them inside its own.

A worker is in quarantine while its last `after` ended attempts failed through the box (no completed one since)
and the latest ended less than `seconds` ago. It comes back by itself; one more failure then sends it straight
back (the streak is ended by a completed job only), so a box that fails everything costs one attempt per
`seconds`, not every job's attempts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator_stub.db.engine import Tx
from orchestrator_stub.db.schema import DISPATCHER_ID

SEEN_WINDOW_S = 60.0  # a worker heard from (a claim or a heartbeat) this recently counts as "seen"
# Error codes that count against the worker an attempt ran on: the box failed, not the job's input.
FAULT_CODES = frozenset({"out_of_memory", "generation_failed", "upload_failed", "timeout", "internal"})


def is_fault(outcome: str, error: dict[str, Any] | None) -> bool:
    """Whether an attempt's ending counts against its worker: a lease it let run out, or a failure of the box
    (crash, out of memory, timeout, an upload or result that failed), never a cancel or a bad input."""
    if outcome == "expired":
        return True
    return outcome in ("failed", "requeued") and (error or {}).get("code") in FAULT_CODES


def start(tx: Tx, job_id: str, attempt: int, worker_id: str) -> None:
    tx.run(
        "INSERT INTO attempts (job_id, attempt, worker_id, claimed_at) VALUES (:j, :a, :w, :now)",
        j=job_id,
        a=attempt,
        w=worker_id,
        now=tx.now,
    )


def end(tx: Tx, job_id: str, attempt: int, outcome: str, error: dict[str, Any] | None) -> bool:
    """Record how an attempt ended (once: a later ending of the same attempt changes nothing); returns whether
    the ending counts against its worker."""
    fault = is_fault(outcome, error)
    tx.run(
        "UPDATE attempts SET ended_at = :now, outcome = :o, error_code = :code, fault = :fault"
        " WHERE job_id = :j AND attempt = :a AND ended_at IS NULL",
        now=tx.now,
        o=outcome,
        code=(error or {}).get("code"),
        fault=int(fault),
        j=job_id,
        a=attempt,
    )
    return fault


def others_seen(tx: Tx, worker_id: str) -> bool:
    """Whether a worker other than this one (and the dispatcher) was heard from in the last minute."""
    row = tx.row(
        "SELECT 1 AS other FROM workers WHERE worker_id <> :w AND worker_id <> :d AND last_seen >= :since LIMIT 1",
        w=worker_id,
        d=DISPATCHER_ID,
        since=tx.now - SEEN_WINDOW_S,
    )
    return row is not None


@dataclass(frozen=True)
class Quarantine:
    """The rule: `after` failures of the box in a row (0: never) keep a worker from jobs for `seconds`."""

    after: int
    seconds: float

    def of(self, tx: Tx, worker_id: str) -> tuple[int, float] | None:
        """(failures in a row, until when) while the worker is in quarantine, else None."""
        if self.after <= 0:
            return None
        row = tx.row(
            "SELECT COUNT(*) AS streak, MAX(ended_at) AS last_fault FROM attempts WHERE worker_id = :w AND fault = 1"
            " AND id > COALESCE((SELECT MAX(id) FROM attempts WHERE worker_id = :w AND outcome = 'completed'), 0)",
            w=worker_id,
        )
        if row is None or row["last_fault"] is None or int(row["streak"]) < self.after:
            return None
        until = float(row["last_fault"]) + self.seconds
        return (int(row["streak"]), until) if until > tx.now else None

    def all(self, tx: Tx) -> dict[str, float]:
        """{worker id: until when} for every worker in quarantine (`of`'s rule, for all at once): only workers
        with a fault in the last `seconds` can be, so only theirs are counted."""
        if self.after <= 0:
            return {}
        since = tx.now - self.seconds
        rows = tx.rows(
            "SELECT a.worker_id, MAX(a.ended_at) AS last_fault FROM attempts a"
            " WHERE a.fault = 1 AND a.worker_id IN"
            " (SELECT DISTINCT worker_id FROM attempts WHERE fault = 1 AND ended_at > :since)"
            " AND a.id > COALESCE((SELECT MAX(b.id) FROM attempts b"
            " WHERE b.worker_id = a.worker_id AND b.outcome = 'completed'), 0)"
            " GROUP BY a.worker_id HAVING COUNT(*) >= :k AND MAX(a.ended_at) > :since",
            since=since,
            k=self.after,
        )
        return {row["worker_id"]: float(row["last_fault"]) + self.seconds for row in rows}
