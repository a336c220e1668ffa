"""The vendored AI gateway URL (shared-gateway mode).

Revision ID: 0007
Revises: 0003
Create Date: 2026-12-04

Adds ``ai_settings.vendored_ai_gateway_url``: the shared AI gateway that serves features set to
vendored. NULL means "as configured" (``instance.vendored_gateway_url``, unset by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ai_settings") as batch:
        batch.add_column(
            sa.Column("vendored_ai_gateway_url", sa.String(length=2048), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("ai_settings") as batch:
        batch.drop_column("vendored_ai_gateway_url")
