"""Storage pools (dir, NFS, iSCSI, LVM) as libvirt defines them on hosts, and the volumes inside them."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column

if TYPE_CHECKING:
    from appliance.db.models.pools import HardwarePool


class StorageType(enum.StrEnum):
    DIR = "dir"
    NFS = "nfs"
    ISCSI = "iscsi"
    LOGICAL = "logical"  # an LVM volume group

    def is_remote(self) -> bool:
        return self in (StorageType.NFS, StorageType.ISCSI)


class StorageState(enum.StrEnum):
    PENDING = "pending"  # recorded, create task not yet done
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"
    DELETING = "deleting"
    FAILED = "failed"


class VolumeFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


# The fields each type cannot do without; enforced in the database so a half-described pool is never stored.
_TYPE_FIELDS = (
    "(type != 'dir' OR path IS NOT NULL)"
    " AND (type != 'nfs' OR (server IS NOT NULL AND export IS NOT NULL))"
    " AND (type != 'iscsi' OR (server IS NOT NULL AND target IS NOT NULL))"
    " AND (type != 'logical' OR vg_name IS NOT NULL)"
)


class StoragePool(IdMixin, CreatedMixin, Base):
    __tablename__ = "storage_pools"
    __table_args__ = (
        CheckConstraint(_TYPE_FIELDS, name="type_fields"),
        CheckConstraint("port IS NULL OR (port >= 1 AND port <= 65535)", name="port_range"),
    )

    name: Mapped[str] = mapped_column(unique=True)
    type: Mapped[StorageType] = mapped_column(enum_column(StorageType, "storage_type"))
    state: Mapped[StorageState] = mapped_column(
        enum_column(StorageState, "storage_pool_state"), default=StorageState.PENDING
    )
    hardware_pool_id: Mapped[int] = mapped_column(ForeignKey("hardware_pools.id", ondelete="RESTRICT"), index=True)
    path: Mapped[str | None]  # dir: the directory; nfs/iscsi/logical: where the host mounts or sees it
    server: Mapped[str | None]  # nfs server or iSCSI portal host
    export: Mapped[str | None]  # nfs export path
    target: Mapped[str | None]  # iSCSI target IQN
    port: Mapped[int | None]  # iSCSI portal port (3260 when unset)
    initiator_iqn: Mapped[str | None]  # iSCSI initiator IQN the hosts log in with, when the target restricts it
    vg_name: Mapped[str | None]  # logical: the LVM volume group
    capacity_bytes: Mapped[int | None] = mapped_column(BigInteger)
    allocation_bytes: Mapped[int | None] = mapped_column(BigInteger)
    available_bytes: Mapped[int | None] = mapped_column(BigInteger)
    refreshed_at: Mapped[datetime | None]

    pool: Mapped[HardwarePool] = relationship()
    volumes: Mapped[list[StorageVolume]] = relationship(back_populates="storage_pool")


class StorageVolume(IdMixin, CreatedMixin, Base):
    __tablename__ = "storage_volumes"
    __table_args__ = (UniqueConstraint("storage_pool_id", "name"),)

    # RESTRICT: a pool is deleted by a task that removes its volumes first, never implicitly.
    storage_pool_id: Mapped[int] = mapped_column(ForeignKey("storage_pools.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str]
    state: Mapped[StorageState] = mapped_column(
        enum_column(StorageState, "storage_volume_state"), default=StorageState.PENDING
    )
    capacity_bytes: Mapped[int] = mapped_column(BigInteger)
    allocation_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    format: Mapped[VolumeFormat] = mapped_column(enum_column(VolumeFormat, "volume_format"), default=VolumeFormat.RAW)
    path: Mapped[str | None]  # as libvirt reports it once the volume exists
    lun: Mapped[int | None]  # iSCSI LUN number
    # A copy-on-write overlay (qcow2) reads what it has not written from this volume, its backing file: a
    # VM made from a template gets one over the template's base image. RESTRICT: the base outlives overlays.
    backing_volume_id: Mapped[int | None] = mapped_column(
        ForeignKey("storage_volumes.id", ondelete="RESTRICT"), index=True
    )

    storage_pool: Mapped[StoragePool] = relationship(back_populates="volumes")
    backing: Mapped[StorageVolume | None] = relationship(remote_side="StorageVolume.id")
