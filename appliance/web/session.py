"""The web UI's session cookie: who signed in, until when, and the CSRF token of that session.

The cookie is `<payload>.<mac>`: the payload is base64url JSON `{"p": principal, "e": expiry, "c": csrf}`
and the MAC an HMAC-SHA-256 over it with a key kept in the state dir (0600), so every appliance process
sharing that dir accepts the same cookies and a restart signs nobody out. Nothing secret is in the cookie:
it only says whom the KDC vouched for at sign-in; forging one needs the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE = "drover_session"
KEY_FILE = "ui-session.key"
# A working day: long enough not to nag, short enough that a stolen cookie ages out.
LIFETIME_SECONDS = 8 * 3600


@dataclass(frozen=True)
class UiSession:
    principal: str
    expires: int  # unix time
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_key(state_dir: Path) -> bytes:
    """The signing key, created on first use (O_EXCL: two processes starting at once agree on one)."""
    path = state_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
        # A half-written key from a crash: the other process reads it back after we replace it.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        key = secrets.token_bytes(32)
        out.write(key)
    return key


class Signer:
    def __init__(self, key: bytes, lifetime: int = LIFETIME_SECONDS) -> None:
        self._key = key
        self.lifetime = lifetime

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, principal: str, now: float | None = None) -> tuple[UiSession, str]:
        """A new session for `principal` with a fresh CSRF token, and its cookie value."""
        session = UiSession(principal, int((now or time.time()) + self.lifetime), secrets.token_urlsafe(24))
        payload = _b64(json.dumps({"p": session.principal, "e": session.expires, "c": session.csrf}).encode())
        return session, f"{payload}.{self._mac(payload)}"

    def read(self, cookie: str | None, now: float | None = None) -> UiSession | None:
        """The session a cookie carries, or None if it is missing, forged, malformed or expired."""
        if not cookie or len(cookie) > 4096:
            return None
        payload, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = UiSession(str(data["p"]), int(data["e"]), str(data["c"]))
        except (binascii.Error, ValueError, KeyError, TypeError):
            return None
        if session.expires <= (now or time.time()):
            return None
        return session


def csrf_ok(session: UiSession, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(session.csrf.encode(), sent.encode())
