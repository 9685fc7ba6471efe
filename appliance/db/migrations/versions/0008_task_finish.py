"""Copy-on-write overlays: a storage volume may name the volume it is backed by (a VM over a template).

Revision ID: 0008
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("storage_volumes") as batch:
        batch.add_column(sa.Column("backing_volume_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_storage_volumes_backing_volume_id_storage_volumes"), "storage_volumes",
                                 ["backing_volume_id"], ["id"], ondelete="RESTRICT")  # fmt: skip
        batch.create_index(op.f("ix_storage_volumes_backing_volume_id"), ["backing_volume_id"])


def downgrade() -> None:
    with op.batch_alter_table("storage_volumes") as batch:
        batch.drop_index(op.f("ix_storage_volumes_backing_volume_id"))
        batch.drop_constraint(op.f("fk_storage_volumes_backing_volume_id_storage_volumes"), type_="foreignkey")
        batch.drop_column("backing_volume_id")
