"""Logical networks VMs and hosts attach to: VLAN, MTU, role, bridge, host addressing; the clusters they are
attached to, the rules that pick a NIC on every host, and each host's assignment of NICs (or a bond) to them."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, Column, ForeignKey, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column

if TYPE_CHECKING:
    from appliance.db.models.hosts import Host
    from appliance.db.models.pools import Cluster


class BootProtocol(enum.StrEnum):
    """How a host gets its own address on the network's bridge."""

    DHCP = "dhcp"
    STATIC = "static"
    NONE = "none"  # layer 2 only: the bridge has no address on the host


class NetworkRole(enum.StrEnum):
    VM = "vm"  # guests' traffic: a bridge, usually without a host address
    MIGRATION = "migration"  # live migration streams go to the destination's address here
    MANAGEMENT = "management"  # the appliance <-> node link (libvirt, heartbeats)
    STORAGE = "storage"  # NFS / iSCSI traffic

    def needs_host_address(self) -> bool:
        return self is not NetworkRole.VM


class BondMode(enum.StrEnum):
    """The Linux bonding driver's modes, spelled as systemd-networkd's Mode= takes them."""

    BALANCE_RR = "balance-rr"
    ACTIVE_BACKUP = "active-backup"
    BALANCE_XOR = "balance-xor"
    BROADCAST = "broadcast"
    LACP = "802.3ad"
    BALANCE_TLB = "balance-tlb"
    BALANCE_ALB = "balance-alb"


class RuleMatch(enum.StrEnum):
    NAME = "name"  # the NIC with this kernel name on every host
    MAC = "mac"  # the NIC with this MAC (one host, whatever it names it)


network_clusters = Table(
    "network_clusters",
    Base.metadata,
    Column("network_id", ForeignKey("networks.id", ondelete="CASCADE"), primary_key=True),
    Column("cluster_id", ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True),
)


class Network(IdMixin, CreatedMixin, Base):
    __tablename__ = "networks"
    __table_args__ = (
        CheckConstraint("vlan IS NULL OR (vlan >= 1 AND vlan <= 4094)", name="vlan_range"),
        CheckConstraint("mtu IS NULL OR (mtu >= 68 AND mtu <= 65535)", name="mtu_range"),
    )

    name: Mapped[str] = mapped_column(unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    vlan: Mapped[int | None]  # NULL: untagged
    mtu: Mapped[int | None]  # NULL: the NIC's default (1500)
    role: Mapped[NetworkRole] = mapped_column(enum_column(NetworkRole, "network_role"), default=NetworkRole.VM)
    # Linux limits interface names to 15 bytes; a longer bridge name would fail only on the node.
    bridge: Mapped[str | None] = mapped_column(String(15), unique=True)
    boot_protocol: Mapped[BootProtocol] = mapped_column(
        enum_column(BootProtocol, "boot_protocol"), default=BootProtocol.DHCP
    )
    subnet: Mapped[str | None] = mapped_column(String(49))  # CIDR, for static host addresses
    gateway: Mapped[str | None] = mapped_column(String(45))

    ip_ranges: Mapped[list[IpRange]] = relationship(back_populates="network", cascade="all, delete-orphan")
    clusters: Mapped[list[Cluster]] = relationship(secondary=network_clusters)
    rules: Mapped[list[NetworkRule]] = relationship(
        back_populates="network", cascade="all, delete-orphan", order_by="NetworkRule.id"
    )
    assignments: Mapped[list[HostNetwork]] = relationship(back_populates="network", cascade="all, delete-orphan")


class IpRange(IdMixin, Base):
    """An inclusive range of addresses on a network, for static assignment to VMs or hosts."""

    __tablename__ = "ip_ranges"
    __table_args__ = (CheckConstraint("prefix >= 0 AND prefix <= 128", name="prefix_range"),)

    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"), index=True)
    first: Mapped[str] = mapped_column(String(45))  # 45: the longest textual IPv6 address
    last: Mapped[str] = mapped_column(String(45))
    prefix: Mapped[int]
    gateway: Mapped[str | None] = mapped_column(String(45))

    network: Mapped[Network] = relationship(back_populates="ip_ranges")


class NetworkRule(IdMixin, Base):
    """ "The NIC named X on every host" / "the NIC with MAC Y": used on a host that has no assignment of its own."""

    __tablename__ = "network_rules"
    __table_args__ = (UniqueConstraint("network_id", "match", "value"),)

    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"), index=True)
    match: Mapped[RuleMatch] = mapped_column(enum_column(RuleMatch, "rule_match"))
    value: Mapped[str] = mapped_column(String(64))

    network: Mapped[Network] = relationship(back_populates="rules")


class HostNetwork(IdMixin, Base):
    """An admin's assignment: which NICs of a host carry a network (two or more: a bond with `bond_mode`)."""

    __tablename__ = "host_networks"
    __table_args__ = (UniqueConstraint("host_id", "network_id"),)

    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id", ondelete="CASCADE"), index=True)
    nics: Mapped[list[str]] = mapped_column(default=list)  # kernel names on the host, sorted
    bond_mode: Mapped[BondMode | None] = mapped_column(enum_column(BondMode, "bond_mode"))
    address: Mapped[str | None] = mapped_column(String(49))  # CIDR, for a static host address

    host: Mapped[Host] = relationship(back_populates="networks")
    network: Mapped[Network] = relationship(back_populates="assignments")
