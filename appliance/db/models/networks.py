"""Logical networks VMs and hosts attach to: VLAN, bridge, boot protocol and the address ranges handed out."""

from __future__ import annotations

import enum

from sqlalchemy import CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column


class BootProtocol(enum.StrEnum):
    DHCP = "dhcp"
    STATIC = "static"
    NONE = "none"  # layer 2 only: the bridge has no address on the host


class Network(IdMixin, CreatedMixin, Base):
    __tablename__ = "networks"
    __table_args__ = (CheckConstraint("vlan IS NULL OR (vlan >= 1 AND vlan <= 4094)", name="vlan_range"),)

    name: Mapped[str] = mapped_column(unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    vlan: Mapped[int | None]
    # Linux limits interface names to 15 bytes; a longer bridge name would fail only on the node.
    bridge: Mapped[str | None] = mapped_column(String(15))
    boot_protocol: Mapped[BootProtocol] = mapped_column(
        enum_column(BootProtocol, "boot_protocol"), default=BootProtocol.DHCP
    )

    ip_ranges: Mapped[list[IpRange]] = relationship(back_populates="network", cascade="all, delete-orphan")


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
