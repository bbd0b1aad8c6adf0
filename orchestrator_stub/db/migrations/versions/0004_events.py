"""Live events and Standard Webhooks (issue 28): the event log, one webhook delivery per event a job asked for.

- `job_events`: every state change of a job, written in the transaction that makes the change. `id` only
  grows, so a stream resumes after the last id it sent (SSE's Last-Event-ID).
- `webhook_deliveries`: one row per webhook a job asked for (`jobs.notify_events`), written with the event it
  tells of; delivered in id order per job. `next_at`: when the next attempt is due; `lease_until`: an attempt is
  in flight until then.
- `webhook_attempts.delivery_id`/`type`: which delivery an attempt was of.

The shape is the one the stub of main d140ec1 created with its own statements, so a file it made is stamped at
this revision (`migrate.legacy_revision`).

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("notify_events", sa.Text()))
    op.add_column("webhook_attempts", sa.Column("delivery_id", sa.BigInteger()))
    op.add_column("webhook_attempts", sa.Column("type", sa.Text()))
    op.create_table(
        "job_events",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("job_events_by_job", "job_events", ["job_id", "id"])
    op.create_index("job_events_by_time", "job_events", ["at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_at", sa.Double(), nullable=False),
        sa.Column("lease_until", sa.Double()),
        sa.Column("body", sa.Text()),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("done_at", sa.Double()),
        sqlite_autoincrement=True,
    )
    op.create_index("webhook_deliveries_by_job", "webhook_deliveries", ["job_id", "id"])
    op.create_index(
        "webhook_deliveries_due",
        "webhook_deliveries",
        ["next_at"],
        sqlite_where=sa.text("state = 'pending'"),
        postgresql_where=sa.text("state = 'pending'"),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("job_events")
    with op.batch_alter_table("webhook_attempts") as batch:
        batch.drop_column("type")
        batch.drop_column("delivery_id")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("notify_events")
