"""An optional fallback model per feature setting.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

Adds ``ai_feature_settings.fallback_model_id``: the self-hosted model the instance tries once
when the primary model fails. NULL (no fallback) for every existing setting.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ai_feature_settings") as batch:
        batch.add_column(sa.Column("fallback_model_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_ai_feature_settings_fallback_model_id"),
            "ai_self_hosted_models",
            ["fallback_model_id"],
            ["id"],
            ondelete="RESTRICT",
        )
        batch.create_index(
            op.f("ix_ai_feature_settings_fallback_model_id"), ["fallback_model_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ai_feature_settings") as batch:
        batch.drop_index(op.f("ix_ai_feature_settings_fallback_model_id"))
        batch.drop_constraint(
            op.f("fk_ai_feature_settings_fallback_model_id"),
            type_="foreignkey",
        )
        batch.drop_column("fallback_model_id")
