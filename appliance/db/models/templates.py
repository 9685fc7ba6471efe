"""Templates (a base image plus VM defaults) and VM pools: a number of identical VMs made from one template."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column
from appliance.db.models.hosts import Arch
from appliance.db.models.vms import BootDevice

if TYPE_CHECKING:
    from appliance.db.models.pools import HardwarePool
    from appliance.db.models.storage import StorageVolume
    from appliance.db.models.vms import Vm


class Template(IdMixin, CreatedMixin, Base):
    __tablename__ = "templates"
    __table_args__ = (
        CheckConstraint("vcpus >= 1", name="vcpus_positive"),
        CheckConstraint("memory_mib >= 1", name="memory_positive"),
    )

    uuid: Mapped[str] = mapped_column(unique=True)
    name: Mapped[str] = mapped_column(unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    vcpus: Mapped[int] = mapped_column(default=1)
    memory_mib: Mapped[int] = mapped_column(BigInteger, default=512)
    arch: Mapped[Arch] = mapped_column(enum_column(Arch, "template_arch"), default=Arch.X86_64)
    boot_device: Mapped[BootDevice] = mapped_column(
        enum_column(BootDevice, "template_boot_device"), default=BootDevice.HD
    )
    # The read-only base image new VMs get a copy-on-write overlay of.
    storage_volume_id: Mapped[int | None] = mapped_column(
        ForeignKey("storage_volumes.id", ondelete="RESTRICT"), index=True
    )

    volume: Mapped[StorageVolume | None] = relationship()


class VmPool(IdMixin, CreatedMixin, Base):
    __tablename__ = "vm_pools"
    __table_args__ = (
        CheckConstraint("size >= 0", name="size_not_negative"),
        CheckConstraint("prestarted >= 0", name="prestarted_not_negative"),
    )

    name: Mapped[str] = mapped_column(unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(default=0)  # how many VMs the pool keeps made
    # How many of its free VMs (no owner yet) the pool keeps running, so a user who takes one gets it at once.
    prestarted: Mapped[int] = mapped_column(default=0, server_default="0")
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id", ondelete="RESTRICT"), index=True)
    hardware_pool_id: Mapped[int] = mapped_column(ForeignKey("hardware_pools.id", ondelete="RESTRICT"), index=True)

    template: Mapped[Template] = relationship()
    pool: Mapped[HardwarePool] = relationship()
    vms: Mapped[list[Vm]] = relationship(back_populates="vm_pool")
