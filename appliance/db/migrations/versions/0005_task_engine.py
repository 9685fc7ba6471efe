"""Task engine: task priority, back-off, progress and abort; VM state reason, firmware and direct kernel boot;
the task types vm_delete and vm_update_state.

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_OLD_TYPES = (
    "vm_create", "vm_start", "vm_shutdown", "vm_poweroff", "vm_suspend", "vm_resume", "vm_save", "vm_restore",
    "vm_migrate", "vm_clone", "storage_pool_create", "storage_pool_refresh", "storage_pool_delete",
    "volume_create", "volume_refresh", "volume_delete", "host_clear", "snapshot_create", "snapshot_revert",
    "snapshot_delete",
)  # fmt: skip
_NEW_TYPES = (*_OLD_TYPES[:10], "vm_delete", "vm_update_state", *_OLD_TYPES[10:])


def _types_check(values: tuple[str, ...]) -> str:
    return "type IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint(op.f("ck_tasks_task_type"), type_="check")
        batch.create_check_constraint(op.f("ck_tasks_task_type"), _types_check(_NEW_TYPES))
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("progress", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("message", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("abort_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("tasks") as batch:
        for column in ("priority", "progress", "message", "abort_requested"):
            batch.alter_column(column, server_default=None)
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("state_reason", sa.Text(), nullable=False, server_default=""))
        batch.add_column(
            sa.Column(
                "firmware",
                sa.Enum("bios", "uefi", name="vm_firmware", native_enum=False, create_constraint=True, length=32),
                nullable=False,
                server_default="bios",
            )
        )
        batch.add_column(sa.Column("kernel_path", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("initrd_path", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("kernel_cmdline", sa.Text(), nullable=True))
    with op.batch_alter_table("vms") as batch:
        batch.alter_column("state_reason", server_default=None)
        batch.alter_column("firmware", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_constraint(op.f("ck_vms_vm_firmware"), type_="check")
        for column in ("kernel_cmdline", "initrd_path", "kernel_path", "firmware", "state_reason"):
            batch.drop_column(column)
    op.execute(sa.text("DELETE FROM tasks WHERE type IN ('vm_delete', 'vm_update_state')"))
    with op.batch_alter_table("tasks") as batch:
        for column in ("abort_requested", "message", "progress", "not_before", "priority"):
            batch.drop_column(column)
        batch.drop_constraint(op.f("ck_tasks_task_type"), type_="check")
        batch.create_check_constraint(op.f("ck_tasks_task_type"), _types_check(_OLD_TYPES))
