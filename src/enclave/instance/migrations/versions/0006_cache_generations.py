"""Change counters for the instance's in-memory caches.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-04

Adds ``cache_generations``: one row per cached kind (``auth``: tokens and users; ``models``:
feature settings, self-hosted models, AI settings) whose ``generation`` every change bumps in
the same transaction. Each instance process polls the rows in the background and drops its
cached entries of a kind whose generation moved (see ``instance/caches.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("auth", "models")


def upgrade() -> None:
    table = op.create_table(
        "cache_generations",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_cache_generations")),
    )
    op.bulk_insert(table, [{"kind": kind, "generation": 0} for kind in KINDS])


def downgrade() -> None:
    op.drop_table("cache_generations")
