"""One-time enrolment tokens a node presents to identify itself; only a hash of the secret is stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from appliance.db.base import Base, CreatedMixin, IdMixin


class EnrolmentToken(IdMixin, CreatedMixin, Base):
    __tablename__ = "enrolment_tokens"

    # Public half of the token, used to find the row; the secret half is only ever compared by hash.
    selector: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))  # hex sha256 of the secret half
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    # Optional binding: the token is only good for this machine (DMI UUID) and/or boot NIC.
    host_uuid: Mapped[str | None] = mapped_column(String(36))
    mac: Mapped[str | None] = mapped_column(String(17))
    created_by: Mapped[str | None]
    used_by_host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), index=True)
    note: Mapped[str] = mapped_column(default="")
