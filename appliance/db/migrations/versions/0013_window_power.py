"""An enrolment window's BMC settings: the machine it is for can be powered on from cold, and the host it
enrols as inherits them.

Revision ID: 0013
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrolment_windows") as batch:
        batch.add_column(sa.Column("power_address", sa.String(255), nullable=True))
        batch.add_column(sa.Column("power_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("power_user", sa.String(64), nullable=True))
        batch.add_column(sa.Column("power_secret", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrolment_windows") as batch:
        for column in ("power_secret", "power_user", "power_port", "power_address"):
            batch.drop_column(column)
