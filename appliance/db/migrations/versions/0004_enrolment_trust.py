"""Enrolment trust: enrolment windows, pending hosts' claims, tokens tied to a window, one enrolled host per name.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ENROLLED = sa.text("approved_at IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "enrolment_windows",
        sa.Column("opened_by", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_hosts", sa.Integer(), nullable=False),
        sa.Column("macs", sa.JSON(), nullable=False),
        sa.Column("tokens_minted", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(length=255), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrolment_windows")),
    )
    op.create_table(
        "host_claims",
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("agent_token_hash", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("boot_mac", sa.String(length=17), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_claims_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_claims")),
        sa.UniqueConstraint("agent_token_hash", name=op.f("uq_host_claims_agent_token_hash")),
    )
    op.create_index(op.f("ix_host_claims_host_id"), "host_claims", ["host_id"], unique=False)
    with op.batch_alter_table("enrolment_tokens") as batch:
        batch.add_column(sa.Column("window_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_enrolment_tokens_window_id_enrolment_windows"),
            "enrolment_windows",
            ["window_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(op.f("ix_enrolment_tokens_window_id"), ["window_id"], unique=False)
        batch.create_index(op.f("ix_enrolment_tokens_mac"), ["mac"], unique=False)
    _unenrol_duplicate_names()
    op.create_index(
        "uq_hosts_enrolled_hostname",
        "hosts",
        ["hostname"],
        unique=True,
        sqlite_where=_ENROLLED,
        postgresql_where=_ENROLLED,
    )


def _unenrol_duplicate_names() -> None:
    """Before the index: where a forged identify left two enrolled rows for one name (the hole this
    revision closes), the row heard from last stays enrolled; the others go back to pending."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT id, hostname FROM hosts WHERE approved_at IS NOT NULL "
            "ORDER BY hostname, last_heartbeat_at DESC NULLS LAST, id DESC"
        )
    ).all()
    seen: set[str] = set()
    for host_id, hostname in rows:
        if hostname in seen:
            bind.execute(
                sa.text(
                    "UPDATE hosts SET approved_at = NULL, approved_by = NULL, credentials_issued_at = NULL, "
                    "agent_token_hash = NULL, state = 'pending', "
                    "state_reason = 'another enrolled host has this name: approve again after checking' "
                    "WHERE id = :id"
                ),
                {"id": host_id},
            )
        seen.add(hostname)


def downgrade() -> None:
    op.drop_index("uq_hosts_enrolled_hostname", table_name="hosts")
    with op.batch_alter_table("enrolment_tokens") as batch:
        batch.drop_index(op.f("ix_enrolment_tokens_mac"))
        batch.drop_index(op.f("ix_enrolment_tokens_window_id"))
        batch.drop_constraint(op.f("fk_enrolment_tokens_window_id_enrolment_windows"), type_="foreignkey")
        batch.drop_column("window_id")
    op.drop_index(op.f("ix_host_claims_host_id"), table_name="host_claims")
    op.drop_table("host_claims")
    op.drop_table("enrolment_windows")
