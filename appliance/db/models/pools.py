"""Hardware pools (a tree; a root pool is a data center) and the clusters inside them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from appliance.db.base import Base, CreatedMixin, IdMixin

if TYPE_CHECKING:
    from appliance.db.models.hosts import Host


class HardwarePool(IdMixin, CreatedMixin, Base):
    """A group of hosts and the scope of permissions and quotas; pools nest, as in the original server."""

    __tablename__ = "hardware_pools"
    __table_args__ = (UniqueConstraint("parent_id", "name"),)

    name: Mapped[str]
    description: Mapped[str] = mapped_column(Text, default="")
    # RESTRICT: deleting a pool that still has sub-pools is a mistake the caller must resolve first.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("hardware_pools.id", ondelete="RESTRICT"), index=True)

    parent: Mapped[HardwarePool | None] = relationship(back_populates="children", remote_side="HardwarePool.id")
    children: Mapped[list[HardwarePool]] = relationship(back_populates="parent")
    clusters: Mapped[list[Cluster]] = relationship(back_populates="pool")
    hosts: Mapped[list[Host]] = relationship(back_populates="pool")

    @property
    def is_datacenter(self) -> bool:
        return self.parent_id is None


class Cluster(IdMixin, CreatedMixin, Base):
    """Hosts that can run each other's VMs (same CPU family, same networks): the migration domain."""

    __tablename__ = "clusters"
    __table_args__ = (UniqueConstraint("hardware_pool_id", "name"),)

    name: Mapped[str]
    description: Mapped[str] = mapped_column(Text, default="")
    hardware_pool_id: Mapped[int] = mapped_column(ForeignKey("hardware_pools.id", ondelete="RESTRICT"), index=True)

    pool: Mapped[HardwarePool] = relationship(back_populates="clusters")
    hosts: Mapped[list[Host]] = relationship(back_populates="cluster")
