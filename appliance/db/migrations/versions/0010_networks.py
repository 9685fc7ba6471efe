"""Logical networks: role, MTU, subnet and gateway, a unique bridge; the clusters a network is attached to, the
rules that pick a NIC on every host, each host's NIC assignment; the network set-up a host reports; VMs' IP
addresses as the host browser sees them.

Revision ID: 0010
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    with op.batch_alter_table("networks") as batch:
        batch.add_column(sa.Column("mtu", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column(
                "role",
                _enum("network_role", "vm", "migration", "management", "storage"),
                nullable=False,
                server_default="vm",
            )
        )
        batch.add_column(sa.Column("subnet", sa.String(length=49), nullable=True))
        batch.add_column(sa.Column("gateway", sa.String(length=45), nullable=True))
        batch.create_check_constraint(op.f("ck_networks_mtu_range"), "mtu IS NULL OR (mtu >= 68 AND mtu <= 65535)")
        batch.create_unique_constraint(op.f("uq_networks_bridge"), ["bridge"])
    with op.batch_alter_table("networks") as batch:
        batch.alter_column("role", server_default=None)
    op.create_table(
        "network_clusters",
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("cluster_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name=op.f("fk_network_clusters_cluster_id_clusters"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_network_clusters_network_id_networks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("network_id", "cluster_id", name=op.f("pk_network_clusters")),
    )
    op.create_table(
        "network_rules",
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("match", _enum("rule_match", "name", "mac"), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_network_rules_network_id_networks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_network_rules")),
        sa.UniqueConstraint("network_id", "match", "value", name=op.f("uq_network_rules_network_id_match_value")),
    )
    op.create_index(op.f("ix_network_rules_network_id"), "network_rules", ["network_id"], unique=False)
    op.create_table(
        "host_networks",
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("nics", sa.JSON(), nullable=False),
        sa.Column(
            "bond_mode",
            _enum(
                "bond_mode",
                "balance-rr",
                "active-backup",
                "balance-xor",
                "broadcast",
                "802.3ad",
                "balance-tlb",
                "balance-alb",
            ),
            nullable=True,
        ),
        sa.Column("address", sa.String(length=49), nullable=True),
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_networks_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_host_networks_network_id_networks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_networks")),
        sa.UniqueConstraint("host_id", "network_id", name=op.f("uq_host_networks_host_id_network_id")),
    )
    op.create_index(op.f("ix_host_networks_host_id"), "host_networks", ["host_id"], unique=False)
    op.create_index(op.f("ix_host_networks_network_id"), "host_networks", ["network_id"], unique=False)
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("network_generation", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("network_state", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("network_message", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("network_observed", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("network_reported_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("hosts") as batch:
        batch.alter_column("network_message", server_default=None)
        batch.alter_column("network_observed", server_default=None)
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("addresses", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("addresses_source", sa.String(length=16), nullable=False, server_default=""))
    with op.batch_alter_table("vms") as batch:
        batch.alter_column("addresses", server_default=None)
        batch.alter_column("addresses_source", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("addresses_source")
        batch.drop_column("addresses")
    with op.batch_alter_table("hosts") as batch:
        for name in ("network_reported_at", "network_observed", "network_message", "network_state",
                     "network_generation"):  # fmt: skip
            batch.drop_column(name)
    op.drop_index(op.f("ix_host_networks_network_id"), table_name="host_networks")
    op.drop_index(op.f("ix_host_networks_host_id"), table_name="host_networks")
    op.drop_table("host_networks")
    op.drop_index(op.f("ix_network_rules_network_id"), table_name="network_rules")
    op.drop_table("network_rules")
    op.drop_table("network_clusters")
    with op.batch_alter_table("networks") as batch:
        batch.drop_constraint(op.f("uq_networks_bridge"), type_="unique")
        batch.drop_constraint(op.f("ck_networks_mtu_range"), type_="check")
        batch.drop_constraint(op.f("ck_networks_network_role"), type_="check")
        for name in ("gateway", "subnet", "role", "mtu"):
            batch.drop_column(name)
