"""AI usage counts and deleted users' revocations (issue 13).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

Adds ``ai_usage``: requests, errors, tokens and latency per minute, user, feature and model,
written in batches by the instance's background flush (``enclave.instance.usage``); and
``deleted_users``: the pseudonym and PAT ids of deleted users, which the AI gateway keeps
refusing while tokens made from them may still be valid.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ai_usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("feature", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms_total", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_ai_usage_user_id"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_usage")),
    )
    op.create_index(op.f("ix_ai_usage_period_start"), "ai_usage", ["period_start"])
    op.create_index(op.f("ix_ai_usage_user_id"), "ai_usage", ["user_id"])
    op.create_table(
        "deleted_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("global_user_id", sa.String(length=64), nullable=False),
        sa.Column("pat_ids", sa.JSON(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deleted_users")),
    )
    op.create_index(op.f("ix_deleted_users_global_user_id"), "deleted_users", ["global_user_id"])
    op.create_index(op.f("ix_deleted_users_deleted_at"), "deleted_users", ["deleted_at"])


def downgrade() -> None:
    op.drop_table("deleted_users")
    op.drop_table("ai_usage")
