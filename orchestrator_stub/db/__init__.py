"""The stub's SQLite store: jobs, workers, webhook and dispatch attempts, output targets. All SQL lives in this
package.

One connection, guarded by a lock, in WAL mode with `synchronous=FULL`: a committed change survives a
crash of the process or the machine. Every public method is one transaction (`BEGIN IMMEDIATE`, so
even a second process on the same file cannot interleave), which makes a claim atomic: two workers
never get the same job. Times are Unix seconds (wall clock, so leases survive a restart).

`Store` is put together from one mixin per responsibility so that each module stays one job:
`schema` (tables, file, connection), `base` (transactions and the shared transitions), `jobs` (the
public API's side), `claims` (the worker's side: claims, leases, statuses), `records` (workers,
webhook and dispatch attempts), `targets` (v1.2 output targets), `events` + `event_log` (the log of every
change, which streams and webhooks are made from), `deliveries` (which webhook is due). Callers import everything
from here.
"""

from __future__ import annotations

from orchestrator_stub.db.claims import Claimed, ClaimsMixin, LeaseState, StatusOutcome
from orchestrator_stub.db.deliveries import DeliveriesMixin, DueWebhook
from orchestrator_stub.db.event_log import EventLogMixin
from orchestrator_stub.db.events import (
    DEFAULT_NOTIFY_EVENTS,
    EVENT_TYPES,
    FINAL_EVENTS,
    NOTIFY_EVENTS,
    EventRow,
)
from orchestrator_stub.db.jobs import CancelOutcome, IdempotencyConflict, JobsMixin, QueueFull
from orchestrator_stub.db.records import RecordsMixin
from orchestrator_stub.db.schema import DISPATCHER_ID, FINAL, HELD, STATUSES, UnencodableText
from orchestrator_stub.db.targets import TargetsMixin

__all__ = [
    "DEFAULT_NOTIFY_EVENTS",
    "DISPATCHER_ID",
    "EVENT_TYPES",
    "FINAL",
    "FINAL_EVENTS",
    "NOTIFY_EVENTS",
    "HELD",
    "STATUSES",
    "CancelOutcome",
    "Claimed",
    "DueWebhook",
    "EventRow",
    "IdempotencyConflict",
    "LeaseState",
    "QueueFull",
    "StatusOutcome",
    "Store",
    "UnencodableText",
]


class Store(JobsMixin, ClaimsMixin, RecordsMixin, TargetsMixin, EventLogMixin, DeliveriesMixin):
    """The job store; thread-safe, each public method one transaction."""
