"""collectd's signed (HMAC-SHA-256) and encrypted (AES-256-OFB + SHA-1) parts, verified per user.

Sign part 0x0200: `hmac[32] | user name`; the HMAC (key = the user's password) covers the user name
and everything after the part, which is then parsed as signed. Encrypt part 0x0210: `user length
u16 | user | iv[16] | AES-256-OFB(sha1(payload)[20] | payload)` with key = SHA-256(password); the
payload is parsed as encrypted. Semantics as collectd's receiver, with two differences that only
refuse more: an unknown user or a failed check drops the rest of the datagram and is counted (never
"accepted unverified"), and digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

# OFB is "decrepit" in cryptography (old, not broken for this use); collectd 5 encrypts with it.
from cryptography.hazmat.decrepit.ciphers.modes import OFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from monitor.protocol import Decoded, Failure, SecurityLevel, Trust, parse

SIGNATURE_SIZE = 4 + 32  # header + HMAC; the user name follows
ENCRYPTION_HEAD = 4 + 2  # header + user name length; user, IV and the sealed payload follow
IV_SIZE = 16
SHA1_SIZE = 20

# The password of a collectd user, or None if there is no such user.
Passwords = Callable[[str], bytes | None]


class Verifier:
    """Decodes datagrams at one security level with one user table (read through `passwords`)."""

    def __init__(self, level: SecurityLevel, passwords: Passwords) -> None:
        self.level = level
        self.passwords = passwords
        self._keys: dict[bytes, bytes] = {}  # password -> SHA-256 key, so each user's key is hashed once

    def decode(self, datagram: bytes) -> Decoded:
        out = Decoded()
        parse(datagram, self.level, self._secure, out)
        return out

    def _secure(self, buf: bytes, off: int, plen: int, out: Decoded) -> int:
        ptype = struct.unpack_from("!H", buf, off)[0]
        if ptype == 0x0200:
            self._signed(buf, off, plen, out)
        else:
            self._encrypted(buf, off, plen, out)
        return len(buf) if ptype == 0x0200 else off + plen

    def _signed(self, buf: bytes, off: int, plen: int, out: Decoded) -> None:
        if plen <= SIGNATURE_SIZE:
            out.fail(Failure.MALFORMED)
            return
        user = buf[off + SIGNATURE_SIZE : off + plen].decode("utf-8", "replace")
        password = self.passwords(user)
        if password is None:
            out.fail(Failure.UNKNOWN_USER, user)
            return
        rest = buf[off + plen :]
        mac = hmac.new(password, user.encode(), hashlib.sha256)
        mac.update(rest)
        if not hmac.compare_digest(mac.digest(), buf[off + 4 : off + SIGNATURE_SIZE]):
            out.fail(Failure.BAD_SIGNATURE, user)
            return
        parse(rest, self.level, self._secure, out, Trust.SIGNED, user)

    def _encrypted(self, buf: bytes, off: int, plen: int, out: Decoded) -> None:
        if plen < ENCRYPTION_HEAD:
            out.fail(Failure.MALFORMED)
            return
        (ulen,) = struct.unpack_from("!H", buf, off + 4)
        sealed_at = off + ENCRYPTION_HEAD + ulen + IV_SIZE
        if ulen == 0 or sealed_at + SHA1_SIZE > off + plen:
            out.fail(Failure.MALFORMED)
            return
        user = buf[off + ENCRYPTION_HEAD : off + ENCRYPTION_HEAD + ulen].decode("utf-8", "replace")
        password = self.passwords(user)
        if password is None:
            out.fail(Failure.UNKNOWN_USER, user)
            return
        key = self._keys.get(password)
        if key is None:
            key = self._keys[password] = hashlib.sha256(password).digest()
        iv = buf[sealed_at - IV_SIZE : sealed_at]
        plain = decrypt(key, iv, buf[sealed_at : off + plen])
        payload = plain[SHA1_SIZE:]
        if not hmac.compare_digest(hashlib.sha1(payload).digest(), plain[:SHA1_SIZE]):
            out.fail(Failure.BAD_CHECKSUM, user)
            return
        parse(payload, self.level, self._secure, out, Trust.ENCRYPTED, user)


def decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES256(key), OFB(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def verifier(level: SecurityLevel, users: dict[str, bytes]) -> Verifier:
    """A verifier over a fixed user table (tests, the bench)."""
    return Verifier(level, users.get)
