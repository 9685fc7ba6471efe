"""One-time console tickets: a user's right to open one console (VNC or serial) of one VM, once, soon.

Only the hash of the ticket's secret half is stored; the selector finds the row. `used_at` is set by the one
UPDATE that redeems it (WHERE used_at IS NULL), so two appliance processes cannot both accept it.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column


class ConsoleKind(enum.StrEnum):
    VNC = "vnc"
    SERIAL = "serial"


class ConsoleTicket(IdMixin, CreatedMixin, Base):
    __tablename__ = "console_tickets"

    selector: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))  # hex sha256 of the secret half
    principal: Mapped[str]  # whom it was issued to: only they may use it
    # Issued to a web UI session: sha256 of that session's CSRF token, and only that session's cookie may use
    # it (another tab of the same user signed in elsewhere may not). NULL: issued over the API (Kerberos).
    session_hash: Mapped[str | None] = mapped_column(String(64))
    vm_id: Mapped[int] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    kind: Mapped[ConsoleKind] = mapped_column(enum_column(ConsoleKind, "console_kind"))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
