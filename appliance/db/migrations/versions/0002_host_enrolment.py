"""Host enrolment: approval, credential hand-out, the per-boot agent token hash, libvirt port.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table beyond adding columns; batch copies it when it must.
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("approved_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("credentials_issued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("agent_token_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("libvirt_port", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        for column in ("libvirt_port", "agent_token_hash", "credentials_issued_at", "approved_by", "approved_at"):
            batch.drop_column(column)
