"""The event log the UI shows: what happened to which host or VM, and how bad it was."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Connection, ForeignKey, Text, text
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Mapped, Session, mapped_column

from appliance.db.base import Base, IdMixin, enum_column, utcnow


class Severity(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Event(IdMixin, Base):
    __tablename__ = "events"

    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    severity: Mapped[Severity] = mapped_column(enum_column(Severity, "severity"), default=Severity.INFO)
    kind: Mapped[str] = mapped_column(index=True)  # dotted and open-ended, e.g. host.state, vm.migrated
    subject: Mapped[str] = mapped_column(default="")  # what it is about, as a user reads it
    message: Mapped[str] = mapped_column(Text, default="")
    # SET NULL: the log outlives the host or VM it mentions.
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), index=True)
    vm_id: Mapped[int | None] = mapped_column(ForeignKey("vms.id", ondelete="SET NULL"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), index=True)


# On PostgreSQL every transaction that adds events also sends NOTIFY on this channel (delivered at commit,
# dropped on rollback), so the web UI's event hub in every appliance process wakes at once instead of at
# its next poll. SQLite has no such thing: the hub polls there.
NOTIFY_CHANNEL = "drover_events"


_NOTIFY = text("SELECT pg_notify(:channel, '')")


def announce(conn: Connection) -> None:
    """What a transaction that inserts events without the ORM (Core INSERTs) calls itself."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL})


def _announce_events(session: Session, _context: object) -> None:
    if any(isinstance(obj, Event) for obj in session.new):
        announce(session.connection())


sa_event.listen(Session, "after_flush", _announce_events)
