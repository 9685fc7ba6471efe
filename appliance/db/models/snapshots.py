"""VM snapshots: a tree per VM (each snapshot knows the one it was taken on top of)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column

if TYPE_CHECKING:
    from appliance.db.models.vms import Vm


class SnapshotState(enum.StrEnum):
    CREATING = "creating"
    READY = "ready"
    REVERTING = "reverting"
    DELETING = "deleting"
    FAILED = "failed"


class Snapshot(IdMixin, CreatedMixin, Base):
    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("vm_id", "name"),)

    vm_id: Mapped[int] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    # SET NULL: deleting a snapshot in the middle re-roots its children, as libvirt does.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("snapshots.id", ondelete="SET NULL"), index=True)
    name: Mapped[str]
    description: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[SnapshotState] = mapped_column(
        enum_column(SnapshotState, "snapshot_state"), default=SnapshotState.CREATING
    )
    with_memory: Mapped[bool] = mapped_column(default=False)

    vm: Mapped[Vm] = relationship(back_populates="snapshots")
    parent: Mapped[Snapshot | None] = relationship(remote_side="Snapshot.id")
