"""Initial schema: instance settings, users, PATs, self-hosted models, feature settings, audit.

Revision ID: 0001
Revises:
Create Date: 2025-11-25

Written out in full (not imported from the models) so this migration keeps meaning the same
schema whatever the models become later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "instance_settings",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("user_id_salt", sa.LargeBinary(length=32), nullable=False),
        _ts("created_at"),
        sa.CheckConstraint("id = 1", name=op.f("ck_instance_settings_singleton")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_settings")),
        sa.UniqueConstraint("instance_id", name=op.f("uq_instance_settings_instance_id")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "ai_self_hosted_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("family", sa.String(length=50), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("endpoint", sa.String(length=2048), nullable=True),
        sa.Column("identifier", sa.String(length=255), nullable=True),
        sa.Column("api_token_encrypted", sa.LargeBinary(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_self_hosted_models")),
        sa.UniqueConstraint("name", name=op.f("uq_ai_self_hosted_models_name")),
    )
    op.create_table(
        "personal_access_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("token_digest", sa.String(length=64), nullable=False),
        sa.Column("token_prefix", sa.String(length=16), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        _ts("expires_at", nullable=True),
        _ts("last_used_at", nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_personal_access_tokens_user_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_personal_access_tokens")),
        sa.UniqueConstraint("token_digest", name=op.f("uq_personal_access_tokens_token_digest")),
    )
    op.create_index(
        op.f("ix_personal_access_tokens_user_id"), "personal_access_tokens", ["user_id"]
    )
    op.create_table(
        "ai_feature_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feature", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("self_hosted_model_id", sa.Integer(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(
            "provider IN ('disabled', 'vendored', 'self_hosted', 'unassigned')",
            name=op.f("ck_ai_feature_settings_provider"),
        ),
        sa.CheckConstraint(
            "provider <> 'self_hosted' OR self_hosted_model_id IS NOT NULL",
            name=op.f("ck_ai_feature_settings_self_hosted_needs_model"),
        ),
        sa.ForeignKeyConstraint(
            ["self_hosted_model_id"],
            ["ai_self_hosted_models.id"],
            name=op.f("fk_ai_feature_settings_self_hosted_model_id"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_feature_settings")),
        sa.UniqueConstraint("feature", name=op.f("uq_ai_feature_settings_feature")),
    )
    op.create_index(
        op.f("ix_ai_feature_settings_self_hosted_model_id"),
        "ai_feature_settings",
        ["self_hosted_model_id"],
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["author_id"],
            ["users.id"],
            name=op.f("fk_audit_events_author_id"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_action"), "audit_events", ["action"])
    op.create_index(op.f("ix_audit_events_author_id"), "audit_events", ["author_id"])
    op.create_index(op.f("ix_audit_events_created_at"), "audit_events", ["created_at"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("ai_feature_settings")
    op.drop_table("personal_access_tokens")
    op.drop_table("ai_self_hosted_models")
    op.drop_table("users")
    op.drop_table("instance_settings")
