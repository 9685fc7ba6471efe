"""The agent's enrolment, kept under /run for the rest of this boot.

An agent restarted on a running node (a crash, an upgrade, `systemctl restart`) cannot identify again: its
kernel-line token is spent, and the appliance refuses a second identify for a host whose libvirt session is
up (that is how it tells a takeover from a reboot). So the agent keeps what identify (and a later heartbeat)
gave it in a 0600 file on the RAM-backed /run, and a restart in the same boot resumes heartbeating with the
same agent token and credentials. A reboot clears /run, and a different boot id or boot token (a new boot
gets a new one) makes a left-over file count for nothing; an appliance that no longer knows the host
(401 on heartbeat) makes the agent forget it and identify again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from nodeagent import wire
from nodeagent.files import write_atomic

log = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
MODE = 0o600  # it holds the keytab and the agent token, as the keytab file itself does


@dataclass(frozen=True)
class Saved:
    boot_id: str
    boot_token: str  # the kernel-line token this enrolment used ("" when there was none)
    api_url: str  # the appliance's node API it came from
    answer: wire.IdentifyResponse


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def save(path: Path, saved: Saved) -> None:
    body = {"boot_id": saved.boot_id, "boot_token": saved.boot_token, "api_url": saved.api_url,
            "answer": wire.to_dict(saved.answer)}  # fmt: skip
    try:
        write_atomic(path, json.dumps(body).encode(), MODE)
    except OSError as exc:  # a restart would then identify again (and be refused while libvirt is up)
        log.warning("cannot keep the enrolment in %s: %s", path, exc)


def load(path: Path, boot_token: str) -> Saved | None:
    """This boot's saved enrolment, or None (no file, another boot, another token, unreadable)."""
    try:
        raw = json.loads(path.read_text())
        saved = Saved(str(raw["boot_id"]), str(raw["boot_token"]), str(raw["api_url"]),
                      wire.from_dict(wire.IdentifyResponse, raw["answer"]))  # fmt: skip
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, wire.WireError) as exc:
        log.warning("ignoring the saved enrolment in %s: %s", path, exc)
        return None
    if saved.boot_id != boot_id() or saved.boot_token != boot_token:
        return None
    return saved


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)
