"""Web UI sign-in (password hashes, sessions) and personal editor keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

Adds ``users.password_hash`` (NULL: no password, as every existing user), ``web_sessions``
(digests of session cookies) and ``editor_keys`` (long-lived keys for editor tools). Written
out in full, not imported from the models, so it keeps meaning the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("password_hash", sa.String(255), nullable=True))
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_digest", sa.String(64), nullable=False),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE", name=op.f("fk_web_sessions_user_id")),
            nullable=False,
        ),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("session_digest", name=op.f("uq_web_sessions_session_digest")),
    )
    op.create_index(op.f("ix_web_sessions_user_id"), "web_sessions", ["user_id"])
    op.create_table(
        "editor_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="SET NULL", name=op.f("fk_editor_keys_user_id")),
            nullable=True,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_editor_keys")),
    )
    op.create_index(op.f("ix_editor_keys_user_id"), "editor_keys", ["user_id"])
    op.create_index(op.f("ix_editor_keys_expires_at"), "editor_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_table("editor_keys")
    op.drop_table("web_sessions")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("password_hash")
