"""One-time console tickets (VNC and serial consoles in the web UI and the CLI).

Revision ID: 0012
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_tickets",
        sa.Column("selector", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.String(length=255), nullable=False),
        sa.Column("session_hash", sa.String(length=64), nullable=True),
        sa.Column("vm_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("vnc", "serial", name="console_kind", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], name=op.f("fk_console_tickets_vm_id_vms"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_tickets")),
        sa.UniqueConstraint("selector", name=op.f("uq_console_tickets_selector")),
    )
    op.create_index(op.f("ix_console_tickets_vm_id"), "console_tickets", ["vm_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_console_tickets_vm_id"), table_name="console_tickets")
    op.drop_table("console_tickets")
