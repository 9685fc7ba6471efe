"""Host monitoring: the node's collectd user and secret, and its current load for placement.

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("collectd_user", sa.String(64), nullable=True))
        batch.add_column(sa.Column("collectd_secret", sa.String(128), nullable=True))
        batch.add_column(sa.Column("load_average", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cpu_busy_percent", sa.Float(), nullable=True))
        batch.add_column(sa.Column("memory_used_mib", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("vm_count", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("load_updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint("uq_hosts_collectd_user", ["collectd_user"])


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_constraint("uq_hosts_collectd_user", type_="unique")
        for name in (
            "load_updated_at",
            "vm_count",
            "memory_used_mib",
            "cpu_busy_percent",
            "load_average",
            "collectd_secret",
            "collectd_user",
        ):
            batch.drop_column(name)
