"""Hypervisor hosts as the host browser records them, keyed by DMI UUID, with their NICs and disks."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column, utcnow

if TYPE_CHECKING:
    from appliance.db.models.enrolment import HostClaim
    from appliance.db.models.networks import HostNetwork, Network
    from appliance.db.models.pools import Cluster, HardwarePool
    from appliance.db.models.vms import Vm


class HostState(enum.StrEnum):
    PENDING = "pending"  # identified but not yet approved or not yet reachable over libvirt
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"  # stopped answering; its VMs are unreachable
    MAINTENANCE = "maintenance"  # reachable but takes no new VMs

    def accepts_vms(self) -> bool:
        return self is HostState.AVAILABLE


class FenceState(enum.StrEnum):
    """Where the fencer is with an unavailable host (appliance.fencer), in oVirt's order."""

    NONE = "none"  # nothing under way
    SOFT = "soft"  # its agent was asked (in a heartbeat answer) to restart libvirtd; waiting for it to come back
    FENCING = "fencing"  # powering it off through its BMC; failures are retried, never taken for success
    FENCED = "fenced"  # its BMC confirmed power off, or an admin confirmed a reboot: its VMs were released

    def is_fenced(self) -> bool:
        return self is FenceState.FENCED


class HypervisorType(enum.StrEnum):
    KVM = "kvm"
    QEMU = "qemu"  # TCG: no hardware virtualisation on the node


class Arch(enum.StrEnum):
    X86_64 = "x86_64"
    I686 = "i686"
    AARCH64 = "aarch64"
    PPC64LE = "ppc64le"
    S390X = "s390x"


class Host(IdMixin, CreatedMixin, Base):
    __tablename__ = "hosts"
    __table_args__ = (
        # One enrolled host per name: a second machine claiming an enrolled host's FQDN must never get (or
        # re-key) its libvirt/<fqdn> principal. Pending rows may share a name until an admin decides.
        Index(
            "uq_hosts_enrolled_hostname",
            "hostname",
            unique=True,
            sqlite_where=text("approved_at IS NOT NULL"),
            postgresql_where=text("approved_at IS NOT NULL"),
        ),
    )
    # The DMI system UUID, lower case: the one identity a stateless node keeps across reboots.
    uuid: Mapped[str] = mapped_column(unique=True)
    # Unique among enrolled hosts (the index above); a pending machine may claim a name an admin then refuses.
    hostname: Mapped[str] = mapped_column(index=True)  # FQDN
    state: Mapped[HostState] = mapped_column(
        enum_column(HostState, "host_state"), default=HostState.PENDING, index=True
    )
    state_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Why it is in its state: the admin's words for maintenance, the libvirt error for unavailable.
    state_reason: Mapped[str] = mapped_column(Text, default="")
    # Whether the host browser's libvirt session is up, as its writer last recorded it. Kept apart from
    # `state` so it stays visible in maintenance, and so activating can choose available or unavailable.
    libvirt_connected: Mapped[bool] = mapped_column(default=False)
    cpu_model: Mapped[str] = mapped_column(default="")
    cpu_sockets: Mapped[int] = mapped_column(default=1)
    cpu_count: Mapped[int] = mapped_column(default=1)  # logical CPUs libvirt can schedule on
    cpu_cores: Mapped[int] = mapped_column(default=1)  # physical cores
    cpu_speed_mhz: Mapped[int | None]
    cpu_flags: Mapped[list[str]] = mapped_column(default=list)
    memory_mib: Mapped[int] = mapped_column(BigInteger, default=0)
    hypervisor_type: Mapped[HypervisorType] = mapped_column(
        enum_column(HypervisorType, "hypervisor_type"), default=HypervisorType.KVM
    )
    arch: Mapped[Arch] = mapped_column(enum_column(Arch, "host_arch"), default=Arch.X86_64)
    last_heartbeat_at: Mapped[datetime | None]
    # Enrolment: approved by a valid token or an admin; credentials handed out (once per approval/boot).
    approved_at: Mapped[datetime | None]
    approved_by: Mapped[str | None]
    credentials_issued_at: Mapped[datetime | None]
    # Hash of the per-boot agent token the identify answer carried; heartbeats must present it.
    agent_token_hash: Mapped[str | None] = mapped_column(String(64))
    # Where the node's libvirtd listens for qemu+tcp; NULL means [nodes] libvirt_port.
    libvirt_port: Mapped[int | None]
    # The node's collectd network-plugin user and password, issued with its credentials (a new pair at
    # each enrolment, so a re-enrolled node's old secret stops working). The password is kept as is:
    # the receiver needs it to check HMACs and decrypt, as collectd's AuthFile does.
    collectd_user: Mapped[str | None] = mapped_column(String(64), unique=True)
    collectd_secret: Mapped[str | None] = mapped_column(String(128))
    # Current load as the monitor last saw it (placement reads these): the 1-minute load average,
    # CPU busy percent, memory in use and running VMs (the virt plugin's domains); NULL until reported.
    load_average: Mapped[float | None]
    cpu_busy_percent: Mapped[float | None]
    memory_used_mib: Mapped[int | None] = mapped_column(BigInteger)
    vm_count: Mapped[int | None]
    load_updated_at: Mapped[datetime | None]
    # Power management (IPMI over LAN): where its BMC answers and as whom. The password is stored encrypted
    # with the appliance's own key (appliance.secretbox) and never leaves the appliance.
    power_address: Mapped[str | None]
    power_port: Mapped[int | None]
    power_user: Mapped[str | None] = mapped_column(String(64))
    power_secret: Mapped[str | None] = mapped_column(Text)
    # Fencing (appliance.fencer): the step reached, failed power-off attempts, since when, and the latest
    # outcome; who confirmed the fence ("bmc", or the admin who said the host was rebooted).
    fence_state: Mapped[FenceState] = mapped_column(enum_column(FenceState, "fence_state"), default=FenceState.NONE)
    fence_attempts: Mapped[int] = mapped_column(default=0)
    fence_changed_at: Mapped[datetime | None]
    fence_note: Mapped[str] = mapped_column(Text, default="")
    fenced_by: Mapped[str | None]
    # Raised each time a fence starts: the incident its power commands (appliance.db.models.fencing) belong to.
    fence_episode: Mapped[int] = mapped_column(default=0)
    # The soft step: set when the fencer wants the node agent to restart libvirtd; the next heartbeat's
    # answer says so once and clears it.
    libvirtd_restart_asked_at: Mapped[datetime | None]
    # The network set-up the node last reported (nodeagent/netsetup.py): the generation it reached, applied
    # or rolled_back or failed, why, and what it saw on its links; the appliance compares it with its own.
    network_generation: Mapped[str | None] = mapped_column(String(64))
    network_state: Mapped[str | None] = mapped_column(String(32))
    network_message: Mapped[str] = mapped_column(Text, default="")
    network_observed: Mapped[dict[str, Any]] = mapped_column(default=dict)
    network_reported_at: Mapped[datetime | None]
    hardware_pool_id: Mapped[int] = mapped_column(ForeignKey("hardware_pools.id", ondelete="RESTRICT"), index=True)
    cluster_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id", ondelete="SET NULL"), index=True)

    pool: Mapped[HardwarePool] = relationship(back_populates="hosts")
    cluster: Mapped[Cluster | None] = relationship(back_populates="hosts")
    nics: Mapped[list[HostNic]] = relationship(back_populates="host", cascade="all, delete-orphan")
    disks: Mapped[list[HostDisk]] = relationship(back_populates="host", cascade="all, delete-orphan")
    vms: Mapped[list[Vm]] = relationship(back_populates="host")
    networks: Mapped[list[HostNetwork]] = relationship(back_populates="host", cascade="all, delete-orphan")
    # Pending hosts only: the machines that identified as this host without a token (enrolment.py).
    claims: Mapped[list[HostClaim]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="HostClaim.id"
    )


class HostNic(IdMixin, Base):
    __tablename__ = "host_nics"
    __table_args__ = (UniqueConstraint("host_id", "name"),)

    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str]  # kernel interface name on the node, e.g. eno1
    mac: Mapped[str] = mapped_column(unique=True)  # lower case, colon separated
    speed_mbps: Mapped[int | None]
    addresses: Mapped[list[str]] = mapped_column(default=list)  # CIDR strings, v4 and v6
    is_boot: Mapped[bool] = mapped_column(default=False)  # the NIC the node PXE-booted from
    network_id: Mapped[int | None] = mapped_column(ForeignKey("networks.id", ondelete="SET NULL"), index=True)

    host: Mapped[Host] = relationship(back_populates="nics")
    network: Mapped[Network | None] = relationship()


class HostDisk(IdMixin, Base):
    __tablename__ = "host_disks"
    __table_args__ = (UniqueConstraint("host_id", "name"),)

    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str]  # kernel name, e.g. sda
    path: Mapped[str] = mapped_column(default="")  # stable path, e.g. /dev/disk/by-id/...
    model: Mapped[str] = mapped_column(default="")
    serial: Mapped[str] = mapped_column(default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)

    host: Mapped[Host] = relationship(back_populates="disks")
