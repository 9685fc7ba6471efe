"""Virtual machines with their disks and NICs: what the appliance wants each guest to be and where it runs."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column, utcnow
from appliance.db.models.hosts import Arch

if TYPE_CHECKING:
    from appliance.db.models.hosts import Host
    from appliance.db.models.networks import Network
    from appliance.db.models.pools import HardwarePool
    from appliance.db.models.snapshots import Snapshot
    from appliance.db.models.storage import StorageVolume
    from appliance.db.models.templates import Template, VmPool
    from appliance.db.models.users import User


class VmState(enum.StrEnum):
    PENDING = "pending"  # defined in the DB, no create task run yet
    CREATING = "creating"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    PAUSED = "paused"  # suspended in memory
    SAVING = "saving"
    SAVED = "saved"  # memory written to a state file, not on any host
    RESTORING = "restoring"
    MIGRATING = "migrating"
    CRASHED = "crashed"
    UNREACHABLE = "unreachable"  # its host stopped answering: the real state is unknown
    FAILED = "failed"  # a create failed; needs an admin

    def is_on_host(self) -> bool:
        return self in _ON_HOST


_ON_HOST = frozenset(
    {VmState.STARTING, VmState.RUNNING, VmState.STOPPING, VmState.PAUSED, VmState.SAVING, VmState.MIGRATING}
)


class PlacementPolicy(enum.StrEnum):
    LEAST_LOADED = "least_loaded"  # the available host with the most free memory
    FIRST_FIT = "first_fit"  # pack hosts, leaving others empty for maintenance
    PINNED = "pinned"  # only host_id; never migrated automatically


class Firmware(enum.StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


class BootDevice(enum.StrEnum):
    HD = "hd"
    NETWORK = "network"
    CDROM = "cdrom"


class DiskBus(enum.StrEnum):
    VIRTIO = "virtio"
    SCSI = "scsi"
    SATA = "sata"
    IDE = "ide"


class NicModel(enum.StrEnum):
    VIRTIO = "virtio"
    E1000 = "e1000"
    RTL8139 = "rtl8139"


class Vm(IdMixin, CreatedMixin, Base):
    __tablename__ = "vms"
    __table_args__ = (
        CheckConstraint("vcpus >= 1", name="vcpus_positive"),
        CheckConstraint("memory_mib >= 1", name="memory_positive"),
    )

    uuid: Mapped[str] = mapped_column(unique=True)  # the libvirt domain UUID, lower case
    name: Mapped[str] = mapped_column(index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    vcpus: Mapped[int]
    memory_mib: Mapped[int] = mapped_column(BigInteger)
    arch: Mapped[Arch] = mapped_column(enum_column(Arch, "vm_arch"), default=Arch.X86_64)
    state: Mapped[VmState] = mapped_column(enum_column(VmState, "vm_state"), default=VmState.PENDING, index=True)
    state_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Why it is in its state: the error of the task that failed, readable by the user.
    state_reason: Mapped[str] = mapped_column(Text, default="")
    firmware: Mapped[Firmware] = mapped_column(enum_column(Firmware, "vm_firmware"), default=Firmware.BIOS)
    # Direct kernel boot (paths on the host), as the original's kernel/initrd/params: no disk needed.
    kernel_path: Mapped[str | None]
    initrd_path: Mapped[str | None]
    kernel_cmdline: Mapped[str | None] = mapped_column(Text)
    placement_policy: Mapped[PlacementPolicy] = mapped_column(
        enum_column(PlacementPolicy, "placement_policy"), default=PlacementPolicy.LEAST_LOADED
    )
    # High availability: restart elsewhere when the host is lost.
    is_ha: Mapped[bool] = mapped_column(default=False)
    # Among HA VMs of a fenced host, higher restarts first (it is also the restart task's priority).
    ha_priority: Mapped[int] = mapped_column(default=0)
    # The state it had when its host stopped answering (set with `unreachable`): a fence restarts only live ones.
    lost_state: Mapped[VmState | None] = mapped_column(enum_column(VmState, "vm_lost_state"))
    boot_device: Mapped[BootDevice] = mapped_column(enum_column(BootDevice, "boot_device"), default=BootDevice.HD)
    # IP addresses (CIDR) as the host browser last saw them on the running guest's NICs: from the qemu guest
    # agent, else from the host's neighbour table (the bridge's ARP entries for the VM's MACs).
    addresses: Mapped[list[str]] = mapped_column(default=list)
    addresses_source: Mapped[str] = mapped_column(String(16), default="")
    # SET NULL: losing a host record must not delete the VMs that were on it.
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), index=True)
    hardware_pool_id: Mapped[int] = mapped_column(ForeignKey("hardware_pools.id", ondelete="RESTRICT"), index=True)
    template_id: Mapped[int | None] = mapped_column(ForeignKey("templates.id", ondelete="SET NULL"), index=True)
    vm_pool_id: Mapped[int | None] = mapped_column(ForeignKey("vm_pools.id", ondelete="SET NULL"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)

    host: Mapped[Host | None] = relationship(back_populates="vms")
    pool: Mapped[HardwarePool] = relationship()
    template: Mapped[Template | None] = relationship()
    vm_pool: Mapped[VmPool | None] = relationship(back_populates="vms")
    owner: Mapped[User | None] = relationship()
    disks: Mapped[list[VmDisk]] = relationship(back_populates="vm", cascade="all, delete-orphan")
    nics: Mapped[list[VmNic]] = relationship(back_populates="vm", cascade="all, delete-orphan")
    snapshots: Mapped[list[Snapshot]] = relationship(back_populates="vm", cascade="all, delete-orphan")


class VmDisk(IdMixin, Base):
    __tablename__ = "vm_disks"
    __table_args__ = (UniqueConstraint("vm_id", "target_dev"),)

    vm_id: Mapped[int] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    # RESTRICT: a volume in use by a VM is detached before it is deleted.
    storage_volume_id: Mapped[int] = mapped_column(ForeignKey("storage_volumes.id", ondelete="RESTRICT"), index=True)
    target_dev: Mapped[str]  # guest device name, e.g. vda
    bus: Mapped[DiskBus] = mapped_column(enum_column(DiskBus, "disk_bus"), default=DiskBus.VIRTIO)
    boot_order: Mapped[int | None]
    read_only: Mapped[bool] = mapped_column(default=False)

    vm: Mapped[Vm] = relationship(back_populates="disks")
    volume: Mapped[StorageVolume] = relationship()


class VmNic(IdMixin, Base):
    __tablename__ = "vm_nics"

    vm_id: Mapped[int] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    mac: Mapped[str] = mapped_column(unique=True)  # lower case, colon separated
    network_id: Mapped[int | None] = mapped_column(ForeignKey("networks.id", ondelete="SET NULL"), index=True)
    model: Mapped[NicModel] = mapped_column(enum_column(NicModel, "nic_model"), default=NicModel.VIRTIO)

    vm: Mapped[Vm] = relationship(back_populates="nics")
    network: Mapped[Network | None] = relationship()
