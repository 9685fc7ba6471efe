"""Host life cycle: why a host is in its state (maintenance reason), and whether libvirt is connected.

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The server defaults only fill the rows that exist; the models set the values from then on, so the
    # defaults are dropped again and the schema matches the models exactly (compare_server_default).
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("state_reason", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("libvirt_connected", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("hosts") as batch:
        batch.alter_column("state_reason", server_default=None)
        batch.alter_column("libvirt_connected", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("libvirt_connected")
        batch.drop_column("state_reason")
