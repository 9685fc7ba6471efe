"""VM pools keep some of their free VMs running, ready to be taken: the prestarted count.

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vm_pools") as batch:
        batch.add_column(sa.Column("prestarted", sa.Integer(), nullable=False, server_default="0"))
        batch.create_check_constraint("prestarted_not_negative", "prestarted >= 0")


def downgrade() -> None:
    with op.batch_alter_table("vm_pools") as batch:
        batch.drop_constraint("prestarted_not_negative", type_="check")
        batch.drop_column("prestarted")
