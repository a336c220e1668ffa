"""AI settings (gateway URL, timeout, verbose AI logs) and audit event authors.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-26

Adds the ``ai_settings`` singleton and, on ``audit_events``, the author's name and IP address
as they were when the event happened. Existing events keep NULL there (the API then shows the
author's current name, or "system" for bootstrap events).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ai_settings",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("ai_gateway_url", sa.String(length=2048), nullable=True),
        sa.Column("ai_gateway_timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("enabled_instance_verbose_ai_logs", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_ai_settings_singleton")),
        sa.CheckConstraint(
            "ai_gateway_timeout_seconds IS NULL OR "
            "(ai_gateway_timeout_seconds >= 60 AND ai_gateway_timeout_seconds <= 600)",
            name=op.f("ck_ai_settings_timeout_range"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_settings")),
    )
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("author_name", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("ip_address", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("ip_address")
        batch.drop_column("author_name")
    op.drop_table("ai_settings")
