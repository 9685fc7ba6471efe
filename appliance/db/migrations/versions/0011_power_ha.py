"""Power management and fencing of hosts (IPMI settings, fence progress), HA restart priority of VMs.

Revision ID: 0011
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0012"
branch_labels = None
depends_on = None

FENCE_STATES = ("none", "soft", "fencing", "fenced")
VM_STATES = ("pending", "creating", "stopped", "starting", "running", "stopping", "paused", "saving", "saved",
             "restoring", "migrating", "crashed", "unreachable", "failed")  # fmt: skip


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("power_address", sa.String(255), nullable=True))
        batch.add_column(sa.Column("power_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("power_user", sa.String(64), nullable=True))
        batch.add_column(sa.Column("power_secret", sa.Text(), nullable=True))
        # Existing rows get defaults, dropped again below so the schema matches the models exactly.
        batch.add_column(
            sa.Column(
                "fence_state",
                sa.Enum(*FENCE_STATES, name="fence_state", native_enum=False, create_constraint=True, length=32),
                nullable=False,
                server_default="none",
            )
        )
        batch.add_column(sa.Column("fence_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("fence_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("fence_note", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("fenced_by", sa.String(255), nullable=True))
        batch.add_column(sa.Column("libvirtd_restart_asked_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("hosts") as batch:
        for column in ("fence_state", "fence_attempts", "fence_note"):
            batch.alter_column(column, server_default=None)
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("ha_priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column(
                "lost_state",
                sa.Enum(*VM_STATES, name="vm_lost_state", native_enum=False, create_constraint=True, length=32),
                nullable=True,
            )
        )
    with op.batch_alter_table("vms") as batch:
        batch.alter_column("ha_priority", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_constraint("vm_lost_state", type_="check")  # ck_vms_vm_lost_state by the convention
        batch.drop_column("lost_state")
        batch.drop_column("ha_priority")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_constraint("fence_state", type_="check")  # ck_hosts_fence_state by the convention
        for name in (
            "libvirtd_restart_asked_at",
            "fenced_by",
            "fence_note",
            "fence_changed_at",
            "fence_attempts",
            "fence_state",
            "power_secret",
            "power_user",
            "power_port",
            "power_address",
        ):
            batch.drop_column(name)
