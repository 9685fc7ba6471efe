"""Enrolment: one-time tokens a node presents, the windows that hand them out automatically, and the
claims of nodes that identified without one (pending hosts); only hashes of secrets are stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from appliance.db.base import Base, CreatedMixin, IdMixin


class EnrolmentWindow(IdMixin, CreatedMixin, Base):
    """A time- and count-limited period in which the boot service gives PXE clients a token of their own.

    Outside a window an unknown machine gets no token and waits as `pending` for an admin.
    """

    __tablename__ = "enrolment_windows"

    opened_by: Mapped[str]
    expires_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]  # closed early by an admin
    max_hosts: Mapped[int]  # distinct MACs it hands tokens to
    macs: Mapped[list[str]] = mapped_column(JSON, default=list)  # only these MACs; empty: any
    tokens_minted: Mapped[int] = mapped_column(default=0)  # distinct MACs served so far
    note: Mapped[str] = mapped_column(default="")
    # The BMC of the one machine a single-MAC window is for (appliance.power): it can be powered on from cold,
    # and the host it enrols as inherits these settings. The password sealed as on hosts.
    power_address: Mapped[str | None]
    power_port: Mapped[int | None]
    power_user: Mapped[str | None] = mapped_column(String(64))
    power_secret: Mapped[str | None] = mapped_column(Text)


class EnrolmentToken(IdMixin, CreatedMixin, Base):
    __tablename__ = "enrolment_tokens"

    # Public half of the token, used to find the row; the secret half is only ever compared by hash.
    selector: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))  # hex sha256 of the secret half
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    # Optional binding: the token is only good for this machine (DMI UUID) and/or boot NIC.
    host_uuid: Mapped[str | None] = mapped_column(String(36))
    mac: Mapped[str | None] = mapped_column(String(17), index=True)
    created_by: Mapped[str | None]
    used_by_host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), index=True)
    # The window that handed it out (boot service); NULL for tokens an admin minted or the boot service
    # minted for a known host's reboot.
    window_id: Mapped[int | None] = mapped_column(ForeignKey("enrolment_windows.id", ondelete="SET NULL"), index=True)
    note: Mapped[str] = mapped_column(default="")


class HostClaim(IdMixin, CreatedMixin, Base):
    """One machine's tokenless identify of a pending host: its facts, where it came from, its agent token.

    A DMI UUID is not a secret, so a second machine may claim a pending host's identity. Its claim is
    kept beside the first, never over it: the admin sees every live claim and approves one.
    """

    __tablename__ = "host_claims"

    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    agent_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(64), default="")  # the address the identify came from
    hostname: Mapped[str] = mapped_column(default="")
    boot_mac: Mapped[str] = mapped_column(String(17), default="")
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # wire.Facts as sent
    last_seen_at: Mapped[datetime]  # identify or heartbeat: a claim not seen for a while is dead
