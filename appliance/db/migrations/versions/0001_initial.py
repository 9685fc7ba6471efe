"""Initial schema: the whole appliance domain, from hardware pools to enrolment tokens.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    # As appliance.db.base.enum_column renders them: VARCHAR(32) plus a named CHECK constraint.
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


_TABLES_CHILDREN_FIRST = (
    "vm_nics",
    "vm_disks",
    "snapshots",
    "events",
    "vms",
    "vm_pools",
    "templates",
    "host_nics",
    "host_disks",
    "enrolment_tokens",
    "storage_volumes",
    "hosts",
    "storage_pools",
    "quotas",
    "permissions",
    "ip_ranges",
    "clusters",
    "users",
    "tasks",
    "networks",
    "hardware_pools",
)


def upgrade() -> None:
    op.create_table(
        "hardware_pools",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["hardware_pools.id"],
            name=op.f("fk_hardware_pools_parent_id_hardware_pools"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hardware_pools")),
        sa.UniqueConstraint("parent_id", "name", name=op.f("uq_hardware_pools_parent_id_name")),
    )
    op.create_index(op.f("ix_hardware_pools_parent_id"), "hardware_pools", ["parent_id"], unique=False)

    op.create_table(
        "networks",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("vlan", sa.Integer(), nullable=True),
        sa.Column("bridge", sa.String(length=15), nullable=True),
        sa.Column(
            "boot_protocol",
            _enum("boot_protocol", "dhcp", "static", "none"),
            nullable=False,
        ),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("vlan IS NULL OR (vlan >= 1 AND vlan <= 4094)", name=op.f("ck_networks_vlan_range")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_networks")),
        sa.UniqueConstraint("name", name=op.f("uq_networks_name")),
    )
    op.create_table(
        "tasks",
        sa.Column(
            "type",
            _enum(
                "task_type",
                "vm_create",
                "vm_start",
                "vm_shutdown",
                "vm_poweroff",
                "vm_suspend",
                "vm_resume",
                "vm_save",
                "vm_restore",
                "vm_migrate",
                "vm_clone",
                "storage_pool_create",
                "storage_pool_refresh",
                "storage_pool_delete",
                "volume_create",
                "volume_refresh",
                "volume_delete",
                "host_clear",
                "snapshot_create",
                "snapshot_revert",
                "snapshot_delete",
            ),
            nullable=False,
        ),
        sa.Column(
            "target_kind",
            _enum("target_kind", "vm", "host", "storage_pool", "storage_volume", "snapshot"),
            nullable=False,
        ),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column(
            "state",
            _enum("task_state", "queued", "running", "finished", "failed", "canceled"),
            nullable=False,
        ),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_tasks_attempts_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index("ix_tasks_state_lease", "tasks", ["state", "lease_expires_at"], unique=False)
    op.create_index("ix_tasks_target", "tasks", ["target_kind", "target_id"], unique=False)

    op.create_table(
        "users",
        sa.Column("principal", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("is_disabled", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("principal", name=op.f("uq_users_principal")),
    )
    op.create_table(
        "clusters",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("hardware_pool_id", sa.Integer(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["hardware_pool_id"],
            ["hardware_pools.id"],
            name=op.f("fk_clusters_hardware_pool_id_hardware_pools"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clusters")),
        sa.UniqueConstraint("hardware_pool_id", "name", name=op.f("uq_clusters_hardware_pool_id_name")),
    )
    op.create_index(op.f("ix_clusters_hardware_pool_id"), "clusters", ["hardware_pool_id"], unique=False)

    op.create_table(
        "ip_ranges",
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("first", sa.String(length=45), nullable=False),
        sa.Column("last", sa.String(length=45), nullable=False),
        sa.Column("prefix", sa.Integer(), nullable=False),
        sa.Column("gateway", sa.String(length=45), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.CheckConstraint("prefix >= 0 AND prefix <= 128", name=op.f("ck_ip_ranges_prefix_range")),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_ip_ranges_network_id_networks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ip_ranges")),
    )
    op.create_index(op.f("ix_ip_ranges_network_id"), "ip_ranges", ["network_id"], unique=False)

    op.create_table(
        "permissions",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column(
            "role",
            _enum("role", "super_admin", "admin", "user", "monitor"),
            nullable=False,
        ),
        sa.Column("hardware_pool_id", sa.Integer(), nullable=True),
        sa.Column("granted_by", sa.String(length=255), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["hardware_pool_id"],
            ["hardware_pools.id"],
            name=op.f("fk_permissions_hardware_pool_id_hardware_pools"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_permissions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_permissions")),
        sa.UniqueConstraint(
            "user_id", "role", "hardware_pool_id", name=op.f("uq_permissions_user_id_role_hardware_pool_id")
        ),
    )
    op.create_index(op.f("ix_permissions_hardware_pool_id"), "permissions", ["hardware_pool_id"], unique=False)
    op.create_index(op.f("ix_permissions_user_id"), "permissions", ["user_id"], unique=False)
    op.create_index(
        "uq_permissions_global",
        "permissions",
        ["user_id", "role"],
        unique=True,
        sqlite_where=sa.text("hardware_pool_id IS NULL"),
        postgresql_where=sa.text("hardware_pool_id IS NULL"),
    )

    op.create_table(
        "quotas",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("hardware_pool_id", sa.Integer(), nullable=False),
        sa.Column("max_vcpus", sa.Integer(), nullable=True),
        sa.Column("max_memory_mib", sa.BigInteger(), nullable=True),
        sa.Column("max_disk_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_vms", sa.Integer(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["hardware_pool_id"],
            ["hardware_pools.id"],
            name=op.f("fk_quotas_hardware_pool_id_hardware_pools"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_quotas_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quotas")),
        sa.UniqueConstraint("user_id", "hardware_pool_id", name=op.f("uq_quotas_user_id_hardware_pool_id")),
    )
    op.create_index(op.f("ix_quotas_hardware_pool_id"), "quotas", ["hardware_pool_id"], unique=False)
    op.create_index(op.f("ix_quotas_user_id"), "quotas", ["user_id"], unique=False)

    op.create_table(
        "storage_pools",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column(
            "type",
            _enum("storage_type", "dir", "nfs", "iscsi", "logical"),
            nullable=False,
        ),
        sa.Column(
            "state",
            _enum("storage_pool_state", "pending", "available", "unavailable", "deleting", "failed"),
            nullable=False,
        ),
        sa.Column("hardware_pool_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=True),
        sa.Column("server", sa.String(length=255), nullable=True),
        sa.Column("export", sa.String(length=255), nullable=True),
        sa.Column("target", sa.String(length=255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("initiator_iqn", sa.String(length=255), nullable=True),
        sa.Column("vg_name", sa.String(length=255), nullable=True),
        sa.Column("capacity_bytes", sa.BigInteger(), nullable=True),
        sa.Column("allocation_bytes", sa.BigInteger(), nullable=True),
        sa.Column("available_bytes", sa.BigInteger(), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(type != 'dir' OR path IS NOT NULL)"
            " AND (type != 'nfs' OR (server IS NOT NULL AND export IS NOT NULL))"
            " AND (type != 'iscsi' OR (server IS NOT NULL AND target IS NOT NULL))"
            " AND (type != 'logical' OR vg_name IS NOT NULL)",
            name=op.f("ck_storage_pools_type_fields"),
        ),
        sa.CheckConstraint("port IS NULL OR (port >= 1 AND port <= 65535)", name=op.f("ck_storage_pools_port_range")),
        sa.ForeignKeyConstraint(
            ["hardware_pool_id"],
            ["hardware_pools.id"],
            name=op.f("fk_storage_pools_hardware_pool_id_hardware_pools"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_pools")),
        sa.UniqueConstraint("name", name=op.f("uq_storage_pools_name")),
    )
    op.create_index(op.f("ix_storage_pools_hardware_pool_id"), "storage_pools", ["hardware_pool_id"], unique=False)

    op.create_table(
        "hosts",
        sa.Column("uuid", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column(
            "state",
            _enum("host_state", "pending", "available", "unavailable", "maintenance"),
            nullable=False,
        ),
        sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cpu_model", sa.String(length=255), nullable=False),
        sa.Column("cpu_sockets", sa.Integer(), nullable=False),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("cpu_cores", sa.Integer(), nullable=False),
        sa.Column("cpu_speed_mhz", sa.Integer(), nullable=True),
        sa.Column("cpu_flags", sa.JSON(), nullable=False),
        sa.Column("memory_mib", sa.BigInteger(), nullable=False),
        sa.Column(
            "hypervisor_type",
            _enum("hypervisor_type", "kvm", "qemu"),
            nullable=False,
        ),
        sa.Column(
            "arch",
            _enum("host_arch", "x86_64", "i686", "aarch64", "ppc64le", "s390x"),
            nullable=False,
        ),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hardware_pool_id", sa.Integer(), nullable=False),
        sa.Column("cluster_id", sa.Integer(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["cluster_id"], ["clusters.id"], name=op.f("fk_hosts_cluster_id_clusters"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["hardware_pool_id"],
            ["hardware_pools.id"],
            name=op.f("fk_hosts_hardware_pool_id_hardware_pools"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("uuid", name=op.f("uq_hosts_uuid")),
    )
    op.create_index(op.f("ix_hosts_cluster_id"), "hosts", ["cluster_id"], unique=False)
    op.create_index(op.f("ix_hosts_hardware_pool_id"), "hosts", ["hardware_pool_id"], unique=False)
    op.create_index(op.f("ix_hosts_hostname"), "hosts", ["hostname"], unique=False)
    op.create_index(op.f("ix_hosts_state"), "hosts", ["state"], unique=False)

    op.create_table(
        "storage_volumes",
        sa.Column("storage_pool_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column(
            "state",
            _enum("storage_volume_state", "pending", "available", "unavailable", "deleting", "failed"),
            nullable=False,
        ),
        sa.Column("capacity_bytes", sa.BigInteger(), nullable=False),
        sa.Column("allocation_bytes", sa.BigInteger(), nullable=False),
        sa.Column(
            "format",
            _enum("volume_format", "raw", "qcow2"),
            nullable=False,
        ),
        sa.Column("path", sa.String(length=255), nullable=True),
        sa.Column("lun", sa.Integer(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["storage_pool_id"],
            ["storage_pools.id"],
            name=op.f("fk_storage_volumes_storage_pool_id_storage_pools"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_volumes")),
        sa.UniqueConstraint("storage_pool_id", "name", name=op.f("uq_storage_volumes_storage_pool_id_name")),
    )
    op.create_index(op.f("ix_storage_volumes_storage_pool_id"), "storage_volumes", ["storage_pool_id"], unique=False)

    op.create_table(
        "enrolment_tokens",
        sa.Column("selector", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("host_uuid", sa.String(length=36), nullable=True),
        sa.Column("mac", sa.String(length=17), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.Column("used_by_host_id", sa.Integer(), nullable=True),
        sa.Column("note", sa.String(length=255), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["used_by_host_id"],
            ["hosts.id"],
            name=op.f("fk_enrolment_tokens_used_by_host_id_hosts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrolment_tokens")),
        sa.UniqueConstraint("selector", name=op.f("uq_enrolment_tokens_selector")),
    )
    op.create_index(op.f("ix_enrolment_tokens_used_by_host_id"), "enrolment_tokens", ["used_by_host_id"], unique=False)

    op.create_table(
        "host_disks",
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("serial", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_disks_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_disks")),
        sa.UniqueConstraint("host_id", "name", name=op.f("uq_host_disks_host_id_name")),
    )
    op.create_index(op.f("ix_host_disks_host_id"), "host_disks", ["host_id"], unique=False)

    op.create_table(
        "host_nics",
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("mac", sa.String(length=255), nullable=False),
        sa.Column("speed_mbps", sa.Integer(), nullable=True),
        sa.Column("addresses", sa.JSON(), nullable=False),
        sa.Column("is_boot", sa.Boolean(), nullable=False),
        sa.Column("network_id", sa.Integer(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_host_nics_host_id_hosts"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_host_nics_network_id_networks"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_nics")),
        sa.UniqueConstraint("host_id", "name", name=op.f("uq_host_nics_host_id_name")),
        sa.UniqueConstraint("mac", name=op.f("uq_host_nics_mac")),
    )
    op.create_index(op.f("ix_host_nics_host_id"), "host_nics", ["host_id"], unique=False)
    op.create_index(op.f("ix_host_nics_network_id"), "host_nics", ["network_id"], unique=False)

    op.create_table(
        "templates",
        sa.Column("uuid", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.BigInteger(), nullable=False),
        sa.Column(
            "arch",
            _enum("template_arch", "x86_64", "i686", "aarch64", "ppc64le", "s390x"),
            nullable=False,
        ),
        sa.Column(
            "boot_device",
            _enum("template_boot_device", "hd", "network", "cdrom"),
            nullable=False,
        ),
        sa.Column("storage_volume_id", sa.Integer(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("memory_mib >= 1", name=op.f("ck_templates_memory_positive")),
        sa.CheckConstraint("vcpus >= 1", name=op.f("ck_templates_vcpus_positive")),
        sa.ForeignKeyConstraint(
            ["storage_volume_id"],
            ["storage_volumes.id"],
            name=op.f("fk_templates_storage_volume_id_storage_volumes"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
        sa.UniqueConstraint("name", name=op.f("uq_templates_name")),
        sa.UniqueConstraint("uuid", name=op.f("uq_templates_uuid")),
    )
    op.create_index(op.f("ix_templates_storage_volume_id"), "templates", ["storage_volume_id"], unique=False)

    op.create_table(
        "vm_pools",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("template_id", sa.Integer(), nullable=False),
        sa.Column("hardware_pool_id", sa.Integer(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("size >= 0", name=op.f("ck_vm_pools_size_not_negative")),
        sa.ForeignKeyConstraint(
            ["hardware_pool_id"],
            ["hardware_pools.id"],
            name=op.f("fk_vm_pools_hardware_pool_id_hardware_pools"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["template_id"], ["templates.id"], name=op.f("fk_vm_pools_template_id_templates"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_pools")),
        sa.UniqueConstraint("name", name=op.f("uq_vm_pools_name")),
    )
    op.create_index(op.f("ix_vm_pools_hardware_pool_id"), "vm_pools", ["hardware_pool_id"], unique=False)
    op.create_index(op.f("ix_vm_pools_template_id"), "vm_pools", ["template_id"], unique=False)

    op.create_table(
        "vms",
        sa.Column("uuid", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.BigInteger(), nullable=False),
        sa.Column(
            "arch",
            _enum("vm_arch", "x86_64", "i686", "aarch64", "ppc64le", "s390x"),
            nullable=False,
        ),
        sa.Column(
            "state",
            _enum(
                "vm_state",
                "pending",
                "creating",
                "stopped",
                "starting",
                "running",
                "stopping",
                "paused",
                "saving",
                "saved",
                "restoring",
                "migrating",
                "crashed",
                "unreachable",
                "failed",
            ),
            nullable=False,
        ),
        sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "placement_policy",
            _enum("placement_policy", "least_loaded", "first_fit", "pinned"),
            nullable=False,
        ),
        sa.Column("is_ha", sa.Boolean(), nullable=False),
        sa.Column(
            "boot_device",
            _enum("boot_device", "hd", "network", "cdrom"),
            nullable=False,
        ),
        sa.Column("host_id", sa.Integer(), nullable=True),
        sa.Column("hardware_pool_id", sa.Integer(), nullable=False),
        sa.Column("template_id", sa.Integer(), nullable=True),
        sa.Column("vm_pool_id", sa.Integer(), nullable=True),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("memory_mib >= 1", name=op.f("ck_vms_memory_positive")),
        sa.CheckConstraint("vcpus >= 1", name=op.f("ck_vms_vcpus_positive")),
        sa.ForeignKeyConstraint(
            ["hardware_pool_id"],
            ["hardware_pools.id"],
            name=op.f("fk_vms_hardware_pool_id_hardware_pools"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_vms_host_id_hosts"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_vms_owner_id_users"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["template_id"], ["templates.id"], name=op.f("fk_vms_template_id_templates"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["vm_pool_id"], ["vm_pools.id"], name=op.f("fk_vms_vm_pool_id_vm_pools"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vms")),
        sa.UniqueConstraint("uuid", name=op.f("uq_vms_uuid")),
    )
    op.create_index(op.f("ix_vms_hardware_pool_id"), "vms", ["hardware_pool_id"], unique=False)
    op.create_index(op.f("ix_vms_host_id"), "vms", ["host_id"], unique=False)
    op.create_index(op.f("ix_vms_name"), "vms", ["name"], unique=False)
    op.create_index(op.f("ix_vms_owner_id"), "vms", ["owner_id"], unique=False)
    op.create_index(op.f("ix_vms_state"), "vms", ["state"], unique=False)
    op.create_index(op.f("ix_vms_template_id"), "vms", ["template_id"], unique=False)
    op.create_index(op.f("ix_vms_vm_pool_id"), "vms", ["vm_pool_id"], unique=False)

    op.create_table(
        "events",
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "severity",
            _enum("severity", "debug", "info", "warning", "error", "critical"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=True),
        sa.Column("vm_id", sa.Integer(), nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_events_host_id_hosts"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_events_task_id_tasks"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], name=op.f("fk_events_vm_id_vms"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_at"), "events", ["at"], unique=False)
    op.create_index(op.f("ix_events_host_id"), "events", ["host_id"], unique=False)
    op.create_index(op.f("ix_events_kind"), "events", ["kind"], unique=False)
    op.create_index(op.f("ix_events_task_id"), "events", ["task_id"], unique=False)
    op.create_index(op.f("ix_events_vm_id"), "events", ["vm_id"], unique=False)

    op.create_table(
        "snapshots",
        sa.Column("vm_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "state",
            _enum("snapshot_state", "creating", "ready", "reverting", "deleting", "failed"),
            nullable=False,
        ),
        sa.Column("with_memory", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["snapshots.id"], name=op.f("fk_snapshots_parent_id_snapshots"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], name=op.f("fk_snapshots_vm_id_vms"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
        sa.UniqueConstraint("vm_id", "name", name=op.f("uq_snapshots_vm_id_name")),
    )
    op.create_index(op.f("ix_snapshots_parent_id"), "snapshots", ["parent_id"], unique=False)
    op.create_index(op.f("ix_snapshots_vm_id"), "snapshots", ["vm_id"], unique=False)

    op.create_table(
        "vm_disks",
        sa.Column("vm_id", sa.Integer(), nullable=False),
        sa.Column("storage_volume_id", sa.Integer(), nullable=False),
        sa.Column("target_dev", sa.String(length=255), nullable=False),
        sa.Column(
            "bus",
            _enum("disk_bus", "virtio", "scsi", "sata", "ide"),
            nullable=False,
        ),
        sa.Column("boot_order", sa.Integer(), nullable=True),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["storage_volume_id"],
            ["storage_volumes.id"],
            name=op.f("fk_vm_disks_storage_volume_id_storage_volumes"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], name=op.f("fk_vm_disks_vm_id_vms"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_disks")),
        sa.UniqueConstraint("vm_id", "target_dev", name=op.f("uq_vm_disks_vm_id_target_dev")),
    )
    op.create_index(op.f("ix_vm_disks_storage_volume_id"), "vm_disks", ["storage_volume_id"], unique=False)
    op.create_index(op.f("ix_vm_disks_vm_id"), "vm_disks", ["vm_id"], unique=False)

    op.create_table(
        "vm_nics",
        sa.Column("vm_id", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=255), nullable=False),
        sa.Column("network_id", sa.Integer(), nullable=True),
        sa.Column(
            "model",
            _enum("nic_model", "virtio", "e1000", "rtl8139"),
            nullable=False,
        ),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_vm_nics_network_id_networks"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], name=op.f("fk_vm_nics_vm_id_vms"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_nics")),
        sa.UniqueConstraint("mac", name=op.f("uq_vm_nics_mac")),
    )
    op.create_index(op.f("ix_vm_nics_network_id"), "vm_nics", ["network_id"], unique=False)
    op.create_index(op.f("ix_vm_nics_vm_id"), "vm_nics", ["vm_id"], unique=False)


def downgrade() -> None:
    for table in _TABLES_CHILDREN_FIRST:
        op.drop_table(table)
