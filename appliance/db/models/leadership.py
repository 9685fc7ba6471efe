"""Leases: which appliance process does a job that exactly one of them may do (today: fencing).

One row per job. Its holder renews `expires_at` while it lives; once that time has passed any process may take
the row, and `term` goes up by one each time the holder changes, so what a holder recorded says which term it
was acting in.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from appliance.db.base import Base, IdMixin


class Lease(IdMixin, Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), unique=True)  # the job, e.g. "fencer"
    holder: Mapped[str]  # host:pid:random of the process holding it
    term: Mapped[int] = mapped_column(default=1)
    acquired_at: Mapped[datetime]
    renewed_at: Mapped[datetime]
    expires_at: Mapped[datetime]
