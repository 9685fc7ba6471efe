"""collectd's binary network protocol (version 4+, collectd 5.x): parts, value lists, notifications.

A datagram is a sequence of parts `type u16 | length u16 | body`; strings end with NUL, numbers are
big-endian except GAUGE values, which collectd sends little-endian (x86 doubles). Host, time,
interval, plugin, type and their instances are state carried from part to part: each values part
is one value list made of the state at that point, each message part one notification. Unknown
part types are skipped, as collectd does, so newer senders stay readable.

Security (signature 0x0200, encryption 0x0210) lives in monitor/security.py, which calls back into
`parse` with the trust the verified part earned.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_DATAGRAM = 65535
# collectd's DATA_MAX_NAME_LEN: a longer host/plugin/type string is a malformed packet.
MAX_NAME = 128
MAX_MESSAGE = 256  # NOTIF_MAX_MSG_LEN

_HDR = struct.Struct("!HH")
_U64 = struct.Struct("!Q")
_U16 = struct.Struct("!H")
_HR = float(1 << 30)  # time_hr and interval_hr count 2^-30 s


class Part(enum.IntEnum):
    HOST = 0x0000
    TIME = 0x0001
    PLUGIN = 0x0002
    PLUGIN_INSTANCE = 0x0003
    TYPE = 0x0004
    TYPE_INSTANCE = 0x0005
    VALUES = 0x0006
    INTERVAL = 0x0007
    TIME_HR = 0x0008
    INTERVAL_HR = 0x0009
    MESSAGE = 0x0100
    SEVERITY = 0x0101
    SIGNATURE = 0x0200
    ENCRYPTION = 0x0210


class DsType(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    DERIVE = 2
    ABSOLUTE = 3

    def is_cumulative(self) -> bool:
        """COUNTER and DERIVE grow (a rate is their meaning); GAUGE and ABSOLUTE are the value itself."""
        return self in (DsType.COUNTER, DsType.DERIVE)


class Severity(enum.IntEnum):
    FAILURE = 1
    WARNING = 2
    OKAY = 4


class Trust(enum.IntFlag):
    NONE = 0
    SIGNED = 1
    ENCRYPTED = 2


class SecurityLevel(enum.StrEnum):
    NONE = "none"  # accept plain parts; signed or encrypted ones are still verified
    SIGN = "sign"  # accept signed or encrypted parts only
    ENCRYPT = "encrypt"  # accept encrypted parts only

    def accepts(self, trust: Trust) -> bool:
        if self is SecurityLevel.ENCRYPT:
            return Trust.ENCRYPTED in trust
        if self is SecurityLevel.SIGN:
            return trust != Trust.NONE
        return True


class Failure(enum.StrEnum):
    """Why a datagram (or part of it) was dropped; the receiver counts each kind."""

    TRUNCATED = "truncated"  # a part runs past the end of the datagram, or a header is cut short
    MALFORMED = "malformed"  # a part of a known type with the wrong length or content
    INSECURE = "insecure"  # a part below the security level (e.g. unsigned under Sign)
    UNKNOWN_USER = "unknown_user"
    BAD_SIGNATURE = "bad_signature"
    BAD_CHECKSUM = "bad_checksum"  # decrypted payload does not match its SHA-1: wrong key or tampered
    HOST_MISMATCH = "host_mismatch"  # a user's value list names another host
    UNKNOWN_TYPE = "unknown_type"  # type missing from types.db, or a values count that does not fit it


@dataclass(frozen=True, slots=True)
class ValueList:
    host: str
    plugin: str
    plugin_instance: str
    type: str
    type_instance: str
    time: float  # seconds since the epoch; 0: the sender gave none (the receiver uses its own clock)
    interval: float
    kinds: tuple[DsType, ...]
    values: tuple[int | float, ...]
    user: str = ""  # who signed or encrypted it; "" for plain parts


@dataclass(frozen=True, slots=True)
class Notification:
    host: str
    plugin: str
    plugin_instance: str
    type: str
    type_instance: str
    time: float
    severity: Severity
    message: str
    user: str = ""


@dataclass
class Decoded:
    """What one datagram yielded: its value lists, notifications and the failures met on the way."""

    values: list[ValueList] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    failures: list[tuple[Failure, str]] = field(default_factory=list)  # (kind, user or "")

    def fail(self, kind: Failure, user: str = "") -> None:
        self.failures.append((kind, user))


_STRINGS = frozenset({0x0000, 0x0002, 0x0003, 0x0004, 0x0005, 0x0100})

# Handles a signature or encryption part: (datagram, offset of the part, part length, result) -> offset to go on from.
SecureHandler = Callable[[memoryview, int, int, Decoded], int]


def _string(buf: memoryview, start: int, end: int, limit: int) -> str | None:
    body = bytes(buf[start:end])
    if not body or body[-1] != 0 or len(body) > limit:
        return None
    return body[:-1].decode("utf-8", "replace")


def _values(buf: memoryview, start: int, plen: int) -> tuple[tuple[DsType, ...], tuple[int | float, ...]] | None:
    if plen < 6:
        return None
    (count,) = _U16.unpack_from(buf, start)
    if count == 0 or plen != 6 + 9 * count:
        return None
    raw_kinds = bytes(buf[start + 2 : start + 2 + count])
    try:
        kinds = tuple(DsType(k) for k in raw_kinds)
    except ValueError:
        return None
    at = start + 2 + count
    values: list[int | float] = []
    for kind in kinds:
        if kind is DsType.GAUGE:
            values.append(struct.unpack_from("<d", buf, at)[0])
        elif kind is DsType.DERIVE:
            values.append(struct.unpack_from("!q", buf, at)[0])
        else:  # COUNTER, ABSOLUTE: unsigned 64-bit
            values.append(_U64.unpack_from(buf, at)[0])
        at += 8
    return kinds, tuple(values)


def parse(
    buf: memoryview,
    level: SecurityLevel,
    secure: SecureHandler | None,
    out: Decoded,
    trust: Trust = Trust.NONE,
    user: str = "",
) -> None:
    """Decode the parts of `buf` into `out`, keeping those `level` accepts under `trust`.

    Each call starts with empty state, as collectd's does: a signed or encrypted section does not
    inherit host or plugin from the plain parts before it.
    """
    size = len(buf)
    accepted = level.accepts(trust)
    host = plugin = plugin_instance = type_ = type_instance = ""
    time = interval = 0.0
    severity: Severity | None = None
    insecure = False
    off = 0
    while off < size:
        if size - off < 4:
            out.fail(Failure.TRUNCATED, user)
            return
        ptype, plen = _HDR.unpack_from(buf, off)
        if plen < 4 or off + plen > size:
            out.fail(Failure.TRUNCATED, user)
            return
        body = off + 4
        end = off + plen
        if ptype == Part.VALUES:
            if not accepted:
                insecure = True
            else:
                decoded = _values(buf, body, plen)
                if decoded is None:
                    out.fail(Failure.MALFORMED, user)
                    return
                out.values.append(
                    ValueList(
                        host, plugin, plugin_instance, type_, type_instance, time, interval, *decoded, user=user
                    )
                )
        elif ptype in _STRINGS:
            text = _string(buf, body, end, MAX_MESSAGE if ptype == Part.MESSAGE else MAX_NAME)
            if text is None:
                out.fail(Failure.MALFORMED, user)
                return
            if ptype == Part.HOST:
                host = text
            elif ptype == Part.PLUGIN:
                plugin = text
            elif ptype == Part.PLUGIN_INSTANCE:
                plugin_instance = text
            elif ptype == Part.TYPE:
                type_ = text
            elif ptype == Part.TYPE_INSTANCE:
                type_instance = text
            elif not accepted:
                insecure = True
            elif severity is not None:
                # collectd dispatches a notification at its message part, once severity (and time) are known
                out.notifications.append(
                    Notification(
                        host, plugin, plugin_instance, type_, type_instance, time, severity, text, user=user
                    )
                )
        elif ptype in (Part.TIME, Part.TIME_HR, Part.INTERVAL, Part.INTERVAL_HR, Part.SEVERITY):
            if plen != 12:
                out.fail(Failure.MALFORMED, user)
                return
            (number,) = _U64.unpack_from(buf, body)
            if ptype == Part.TIME:
                time = float(number)
            elif ptype == Part.TIME_HR:
                time = number / _HR
            elif ptype == Part.INTERVAL:
                interval = float(number)
            elif ptype == Part.INTERVAL_HR:
                interval = number / _HR
            else:
                try:
                    severity = Severity(number)
                except ValueError:
                    out.fail(Failure.MALFORMED, user)
                    return
        elif ptype in (Part.SIGNATURE, Part.ENCRYPTION):
            if secure is None:
                return
            off = secure(buf, off, plen, out)
            continue
        # else: an unknown part type, skipped by its length
        off = end
    if insecure:
        out.fail(Failure.INSECURE, user)
