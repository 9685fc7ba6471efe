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
from typing import NamedTuple

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


class ValueList(NamedTuple):
    """One value list. A NamedTuple rather than a frozen dataclass: tens of thousands are made a second,
    and a tuple is built several times faster; it is just as immutable."""

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
SecureHandler = Callable[[bytes, int, int, Decoded], int]


# How to read the values of one kinds signature (the kinds bytes of a values part): built once per
# signature seen. Uniform byte order (all gauges, or none) is one struct call for the whole list.
_Reader = tuple[tuple[DsType, ...], Callable[[bytes, int], tuple[int | float, ...]]]
_READERS: dict[bytes, _Reader | None] = {}
_CODE = {DsType.COUNTER: "Q", DsType.GAUGE: "d", DsType.DERIVE: "q", DsType.ABSOLUTE: "Q"}


def _reader(raw: bytes) -> _Reader | None:
    try:
        kinds = tuple(DsType(k) for k in raw)
    except ValueError:
        return None
    gauges = [k is DsType.GAUGE for k in kinds]
    if all(gauges) or not any(gauges):
        unpack = struct.Struct(("<" if gauges[0] else ">") + "".join(_CODE[k] for k in kinds)).unpack_from
        return kinds, unpack
    singles = [struct.Struct(("<" if g else ">") + _CODE[k]).unpack_from for k, g in zip(kinds, gauges, strict=True)]

    def mixed(buf: bytes, at: int) -> tuple[int | float, ...]:
        return tuple(one(buf, at + 8 * i)[0] for i, one in enumerate(singles))

    return kinds, mixed


def _values(buf: bytes, start: int, plen: int) -> tuple[tuple[DsType, ...], tuple[int | float, ...]] | None:
    if plen < 6:
        return None
    (count,) = _U16.unpack_from(buf, start)
    if count == 0 or plen != 6 + 9 * count:
        return None
    raw = buf[start + 2 : start + 2 + count]
    if raw in _READERS:
        found = _READERS[raw]
    else:
        found = _reader(raw)
        if len(_READERS) < 4096:  # bounded: a sender could make up signatures without end
            _READERS[raw] = found
    if found is None:
        return None
    kinds, unpack = found
    return kinds, unpack(buf, start + 2 + count)


_H_HOST, _H_PLUGIN, _H_PLUGIN_INSTANCE, _H_TYPE, _H_TYPE_INSTANCE, _H_VALUES = 0, 2, 3, 4, 5, 6
_NUMBERS = frozenset({Part.TIME, Part.TIME_HR, Part.INTERVAL, Part.INTERVAL_HR, Part.SEVERITY})
_SECURE = frozenset({Part.SIGNATURE, Part.ENCRYPTION})


def parse(
    buf: bytes,
    level: SecurityLevel,
    secure: SecureHandler | None,
    out: Decoded,
    trust: Trust = Trust.NONE,
    user: str = "",
) -> None:
    """Decode the parts of `buf` into `out`, keeping those `level` accepts under `trust`.

    Each call starts with empty state, as collectd's does: a signed or encrypted section does not
    inherit host or plugin from the plain parts before it. This loop runs for every part of every
    datagram, so it is written for speed: plain ints, locals, strings checked inline.
    """
    size = len(buf)
    accepted = level.accepts(trust)
    host = plugin = plugin_instance = type_ = type_instance = ""
    time = interval = 0.0
    severity: Severity | None = None
    insecure = False
    off = 0
    header = _HDR.unpack_from
    values_out = out.values
    while off < size:
        if size - off < 4:
            out.fail(Failure.TRUNCATED, user)
            return
        ptype, plen = header(buf, off)
        end = off + plen
        if plen < 4 or end > size:
            out.fail(Failure.TRUNCATED, user)
            return
        if ptype == _H_VALUES:
            if not accepted:
                insecure = True
            else:
                decoded = _values(buf, off + 4, plen)
                if decoded is None:
                    out.fail(Failure.MALFORMED, user)
                    return
                kinds, numbers = decoded
                values_out.append(
                    ValueList(host, plugin, plugin_instance, type_, type_instance, time, interval, kinds, numbers, user)
                )
        elif ptype in _STRINGS:
            # NUL-terminated, at most collectd's name length (longer: collectd refuses the packet too)
            if plen == 4 or buf[end - 1] != 0 or plen - 4 > (MAX_MESSAGE if ptype == Part.MESSAGE else MAX_NAME):
                out.fail(Failure.MALFORMED, user)
                return
            text = buf[off + 4 : end - 1].decode("utf-8", "replace")
            if ptype == _H_TYPE:
                type_ = text
            elif ptype == _H_TYPE_INSTANCE:
                type_instance = text
            elif ptype == _H_PLUGIN_INSTANCE:
                plugin_instance = text
            elif ptype == _H_PLUGIN:
                plugin = text
            elif ptype == _H_HOST:
                host = text
            elif not accepted:
                insecure = True
            elif severity is not None:
                # collectd dispatches a notification at its message part, once severity (and time) are known
                out.notifications.append(
                    Notification(
                        host, plugin, plugin_instance, type_, type_instance, time, severity, text, user=user
                    )
                )
        elif ptype in _NUMBERS:
            if plen != 12:
                out.fail(Failure.MALFORMED, user)
                return
            (number,) = _U64.unpack_from(buf, off + 4)
            if ptype == Part.TIME_HR:
                time = number / _HR
            elif ptype == Part.INTERVAL_HR:
                interval = number / _HR
            elif ptype == Part.TIME:
                time = float(number)
            elif ptype == Part.INTERVAL:
                interval = float(number)
            else:
                try:
                    severity = Severity(number)
                except ValueError:
                    out.fail(Failure.MALFORMED, user)
                    return
        elif ptype in _SECURE:
            if secure is None:
                return
            off = secure(buf, off, plen, out)
            continue
        # else: an unknown part type, skipped by its length
        off = end
    if insecure:
        out.fail(Failure.INSECURE, user)
