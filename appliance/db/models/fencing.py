"""What the fencer sent to a host's BMC, per fence episode: a new leader resumes a fence, never repeats it.

An episode is one incident of a host (`hosts.fence_episode`, raised when a fence starts). Each power command is
recorded before it is sent, with the lease term it was sent under, and closed with what the BMC then said. A
leader that finds an attempt still `pending` (its sender died) asks the BMC before sending anything.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from appliance.db.base import Base, CreatedMixin, IdMixin, enum_column


class FenceAction(enum.StrEnum):
    OFF = "off"  # the fence itself
    ON = "on"  # powering a fenced host on again (power_on_after)


class FenceResult(enum.StrEnum):
    PENDING = "pending"  # recorded, maybe sent: the BMC has not been seen to do it yet
    CONFIRMED = "confirmed"  # the BMC reports the state asked for
    FAILED = "failed"  # the BMC refused, did not answer, or never reported it; retried as a new attempt


class FenceAttempt(IdMixin, CreatedMixin, Base):
    __tablename__ = "fence_attempts"
    __table_args__ = (UniqueConstraint("host_id", "episode", "action", "number"),)

    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    episode: Mapped[int]
    action: Mapped[FenceAction] = mapped_column(enum_column(FenceAction, "fence_action"))
    number: Mapped[int]  # 1, 2, ... within the episode and action
    holder: Mapped[str]  # the fencer process that sent it
    term: Mapped[int]  # the lease term it was sent under
    sent_at: Mapped[datetime]
    result: Mapped[FenceResult] = mapped_column(enum_column(FenceResult, "fence_result"), default=FenceResult.PENDING)
    finished_at: Mapped[datetime | None]
    finished_by: Mapped[str | None]  # the process that saw the outcome: another one than `holder` after a takeover
    note: Mapped[str] = mapped_column(Text, default="")
