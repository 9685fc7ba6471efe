"""An encoder for collectd's network protocol, written from the protocol description apart from monitor/.

Tests check monitor's decoder against it (and against real collectd); the bench's sender uses it to
build its packets. Like collectd's own writer it sends host/plugin/type parts only when they change.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.modes import OFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

COUNTER, GAUGE, DERIVE, ABSOLUTE = 0, 1, 2, 3


def part(ptype: int, body: bytes) -> bytes:
    return struct.pack(">HH", ptype, 4 + len(body)) + body


def string(ptype: int, text: str) -> bytes:
    return part(ptype, text.encode() + b"\0")


def number(ptype: int, value: int) -> bytes:
    return part(ptype, struct.pack(">Q", value))


def values(items: Sequence[tuple[int, int | float]]) -> bytes:
    body = struct.pack(">H", len(items)) + bytes(kind for kind, _ in items)
    for kind, value in items:
        if kind == GAUGE:
            body += struct.pack("<d", value)
        elif kind == DERIVE:
            body += struct.pack(">q", value)
        else:
            body += struct.pack(">Q", value)
    return part(6, body)


@dataclass(frozen=True)
class Vl:
    host: str
    plugin: str
    type: str
    values: tuple[tuple[int, int | float], ...]
    plugin_instance: str = ""
    type_instance: str = ""
    time_hr: int = 0  # 2^-30 s
    interval_hr: int = 10 << 30


def encode(vls: Iterable[Vl], hr: bool = True) -> bytes:
    """Value lists as plain parts, repeating a string or number part only when it changes."""
    out = bytearray()
    last: dict[int, object] = {}

    def put(ptype: int, value: object, raw: bytes) -> None:
        if last.get(ptype) != value:
            out.extend(raw)
            last[ptype] = value

    for vl in vls:
        put(0, vl.host, string(0, vl.host))
        if hr:
            put(8, vl.time_hr, number(8, vl.time_hr))
            put(9, vl.interval_hr, number(9, vl.interval_hr))
        else:
            put(1, vl.time_hr >> 30, number(1, vl.time_hr >> 30))
            put(7, vl.interval_hr >> 30, number(7, vl.interval_hr >> 30))
        put(2, vl.plugin, string(2, vl.plugin))
        put(3, vl.plugin_instance, string(3, vl.plugin_instance))
        put(4, vl.type, string(4, vl.type))
        put(5, vl.type_instance, string(5, vl.type_instance))
        out.extend(values(vl.values))
    return bytes(out)


def notification(host: str, severity: int, message: str, time_hr: int, plugin: str = "") -> bytes:
    return (
        string(0, host)
        + number(8, time_hr)
        + string(2, plugin)
        + number(0x101, severity)
        + string(0x100, message)
    )


def sign(payload: bytes, user: str, password: bytes) -> bytes:
    mac = hmac.new(password, user.encode() + payload, hashlib.sha256).digest()
    return part(0x200, mac + user.encode()) + payload


def encrypt(payload: bytes, user: str, password: bytes, iv: bytes | None = None) -> bytes:
    iv = iv or os.urandom(16)
    key = hashlib.sha256(password).digest()
    enc = Cipher(algorithms.AES256(key), OFB(iv)).encryptor()
    sealed = enc.update(hashlib.sha1(payload).digest() + payload) + enc.finalize()
    name = user.encode()
    return part(0x210, struct.pack(">H", len(name)) + name + iv + sealed)
