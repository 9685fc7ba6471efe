"""Users (Kerberos principals), their roles granted globally or on a hardware pool, and per-pool quotas."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column

if TYPE_CHECKING:
    from appliance.db.models.pools import HardwarePool


class Role(enum.StrEnum):
    """From most to least powerful; the declaration order is the rank."""

    SUPER_ADMIN = "super_admin"  # everything, including granting super_admin
    ADMIN = "admin"  # manage hosts, storage, networks and VMs in its scope; grant admin and below
    USER = "user"  # self-service: own VMs within quota
    MONITOR = "monitor"  # read-only

    @property
    def rank(self) -> int:
        """0 for the most powerful role; lower is stronger."""
        return list(Role).index(self)

    def includes(self, other: Role) -> bool:
        return self.rank <= other.rank


class User(IdMixin, CreatedMixin, Base):
    __tablename__ = "users"

    # The full Kerberos principal, user@REALM: what SPNEGO hands the API.
    principal: Mapped[str] = mapped_column(unique=True)
    display_name: Mapped[str] = mapped_column(default="")
    email: Mapped[str] = mapped_column(default="")
    is_disabled: Mapped[bool] = mapped_column(default=False)

    permissions: Mapped[list[Permission]] = relationship(back_populates="user", cascade="all, delete-orphan")
    quotas: Mapped[list[Quota]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Permission(IdMixin, CreatedMixin, Base):
    """A role for a user, in one hardware pool (and its sub-pools) or, with no pool, everywhere."""

    __tablename__ = "permissions"
    __table_args__ = (
        UniqueConstraint("user_id", "role", "hardware_pool_id"),
        # NULL never equals NULL in a UNIQUE constraint, so global grants need their own partial index.
        Index(
            "uq_permissions_global",
            "user_id",
            "role",
            unique=True,
            sqlite_where=text("hardware_pool_id IS NULL"),
            postgresql_where=text("hardware_pool_id IS NULL"),
        ),
    )

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[Role] = mapped_column(enum_column(Role, "role"))
    hardware_pool_id: Mapped[int | None] = mapped_column(
        ForeignKey("hardware_pools.id", ondelete="CASCADE"), index=True
    )
    granted_by: Mapped[str | None]  # principal of the granter; None when granted from the CLI

    user: Mapped[User] = relationship(back_populates="permissions")
    pool: Mapped[HardwarePool | None] = relationship()

    @property
    def is_global(self) -> bool:
        return self.hardware_pool_id is None


class Quota(IdMixin, CreatedMixin, Base):
    """What a user may consume in one hardware pool; a NULL limit means unlimited."""

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("user_id", "hardware_pool_id"),)

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    hardware_pool_id: Mapped[int] = mapped_column(ForeignKey("hardware_pools.id", ondelete="CASCADE"), index=True)
    max_vcpus: Mapped[int | None]
    max_memory_mib: Mapped[int | None] = mapped_column(BigInteger)
    max_disk_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_vms: Mapped[int | None]

    user: Mapped[User] = relationship(back_populates="quotas")
    pool: Mapped[HardwarePool] = relationship()


class WebSession(IdMixin, CreatedMixin, Base):
    """A web UI sign-in. The browser's cookie holds a random id; only its SHA-256 is stored, so a copy of this
    table signs nobody in. Deleting the row ends the session everywhere, whichever appliance process serves it."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex sha256 of the cookie's id
    # The principal the realm vouched for at sign-in (who may have no users row: a principal without a role).
    principal: Mapped[str] = mapped_column(index=True)
    csrf: Mapped[str] = mapped_column(String(64))  # the token every state-changing request of it must carry
    method: Mapped[str] = mapped_column(String(16))  # "kerberos" or "password"
    source: Mapped[str]  # the client's address and user agent at sign-in, for the admin who lists them
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
