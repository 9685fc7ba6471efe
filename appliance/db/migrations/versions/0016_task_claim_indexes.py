"""Partial indexes on live tasks, so a claim walks the queue in its order instead of sorting all of it.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

LIVE = sa.text("state IN ('queued', 'running')")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # the model's ddl_if: SQLite keeps sorting its short queue
        op.create_index("ix_tasks_live_order", "tasks", [sa.text("priority DESC"), "created_at", "id"],
                        postgresql_where=LIVE)  # fmt: skip
    op.create_index("ix_tasks_live_target", "tasks", ["target_kind", "target_id", "id"],
                    postgresql_where=LIVE, sqlite_where=LIVE)  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_tasks_live_target", table_name="tasks")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_tasks_live_order", table_name="tasks")
