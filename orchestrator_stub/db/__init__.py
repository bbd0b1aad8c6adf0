"""The stub's store: jobs, workers, attempts, webhook and dispatch attempts, output targets. All SQL lives in
this package.

One database, SQLite (a file: the embedded default) or PostgreSQL (any number of stub processes, "replicas",
on one database), reached through SQLAlchemy Core (`engine.py`); the schema is Alembic's (`migrate.py`). Every
public method is one transaction, which makes a claim atomic: two workers never get the same job, whether they
asked one replica or two. Committed means durable on both. Times are Unix seconds from the database's clock
(PostgreSQL) or the process's (SQLite), so leases survive a restart.

`Store` is put together from one mixin per responsibility so that each module stays one job: `base`
(transactions, change notices and the shared transitions), `jobs` (the public API's side), `claims` (the
worker's side: claims, leases, statuses), `records` (workers, webhook and dispatch attempts), `targets` (v1.2
output targets), `fleet` (queue figures and quarantine), `events` + `event_log` (the log of every change,
which streams and webhooks are made from), `deliveries` (which webhook is due). Callers import everything from
here.
"""

from __future__ import annotations

from orchestrator_stub.db.claims import ClaimAnswer, Claimed, ClaimsMixin, LeaseState, StatusOutcome
from orchestrator_stub.db.deliveries import DeliveriesMixin, DueWebhook
from orchestrator_stub.db.engine import BadDatabaseUrl, Database, mask_password
from orchestrator_stub.db.event_log import EventLogMixin
from orchestrator_stub.db.events import (
    DEFAULT_NOTIFY_EVENTS,
    EVENT_TYPES,
    FINAL_EVENTS,
    NOTIFY_EVENTS,
    EventRow,
)
from orchestrator_stub.db.fleet import FleetFigures, FleetMixin
from orchestrator_stub.db.jobs import CancelOutcome, IdempotencyConflict, JobsMixin, QueueFull
from orchestrator_stub.db.records import RecordsMixin
from orchestrator_stub.db.schema import DISPATCHER_ID, FINAL, HELD, STATUSES, Queued, UnencodableText
from orchestrator_stub.db.targets import TargetsMixin

__all__ = [
    "DEFAULT_NOTIFY_EVENTS",
    "DISPATCHER_ID",
    "EVENT_TYPES",
    "FINAL",
    "FINAL_EVENTS",
    "HELD",
    "NOTIFY_EVENTS",
    "STATUSES",
    "BadDatabaseUrl",
    "CancelOutcome",
    "ClaimAnswer",
    "Claimed",
    "Database",
    "DueWebhook",
    "EventRow",
    "FleetFigures",
    "IdempotencyConflict",
    "LeaseState",
    "QueueFull",
    "Queued",
    "StatusOutcome",
    "Store",
    "UnencodableText",
    "mask_password",
]


class Store(JobsMixin, ClaimsMixin, RecordsMixin, TargetsMixin, FleetMixin, EventLogMixin, DeliveriesMixin):
    """The job store; thread-safe, each public method one transaction."""
