"""The first schema: jobs, workers, webhook and dispatch attempts, requeues (the stub before protocol v1.2).

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Unix seconds as a double (REAL on SQLite); row ids that SQLite keeps as its rowid, PostgreSQL as a BIGINT.
TIME: sa.Double[float] = sa.Double()
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("seq", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text(), nullable=False, unique=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("num_frames", sa.Integer(), nullable=False),
        sa.Column("notify_url", sa.Text()),
        sa.Column("idempotency_key", sa.Text(), unique=True),
        sa.Column("request_hash", sa.Text()),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("worker_id", sa.Text()),
        sa.Column("lease_expires_at", TIME),
        sa.Column("cancel_requested", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("stage", sa.Text()),
        sa.Column("progress", TIME, nullable=False, server_default="0"),
        sa.Column("step", sa.Integer()),
        sa.Column("total_steps", sa.Integer()),
        sa.Column("message", sa.Text()),
        sa.Column("result", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("final_by", sa.Text()),
        sa.Column("webhook_state", sa.Text()),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("completed_at", TIME),
        sqlite_autoincrement=True,
    )
    op.create_index("jobs_by_status", "jobs", ["status", "seq"])
    op.create_index(
        "jobs_by_lease",
        "jobs",
        ["lease_expires_at"],
        sqlite_where=sa.text("lease_expires_at IS NOT NULL"),
        postgresql_where=sa.text("lease_expires_at IS NOT NULL"),
    )
    op.create_index("jobs_by_update", "jobs", ["updated_at"])
    op.create_index(
        "jobs_by_webhook",
        "jobs",
        ["webhook_state"],
        sqlite_where=sa.text("webhook_state = 'pending'"),
        postgresql_where=sa.text("webhook_state = 'pending'"),
    )
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.Text(), primary_key=True),
        sa.Column("gpu_class", sa.Text()),
        sa.Column("state", sa.Text()),
        sa.Column("job_id", sa.Text()),
        sa.Column("stage", sa.Text()),
        sa.Column("progress", TIME),
        sa.Column("gpu", sa.Text()),
        sa.Column("first_seen", TIME, nullable=False),
        sa.Column("last_seen", TIME, nullable=False),
        sa.Column("last_heartbeat", TIME),
    )
    op.create_index("workers_by_seen", "workers", ["last_seen"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("ok", sa.Integer(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("webhook_attempts_by_job", "webhook_attempts", ["job_id", "id"])
    op.create_table(
        "dispatch_attempts",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error", sa.Text()),
        sqlite_autoincrement=True,
    )
    op.create_index("dispatch_attempts_by_job", "dispatch_attempts", ["job_id", "id"])
    op.create_table(
        "requeues",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.Text()),
        sa.Column("at", TIME, nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("requeues_by_job", "requeues", ["job_id", "id"])


def downgrade() -> None:
    for table in ("requeues", "dispatch_attempts", "webhook_attempts", "workers", "jobs"):
        op.drop_table(table)
