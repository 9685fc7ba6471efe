"""Secrets the appliance must be able to read back (a BMC's password), encrypted at rest with a key of its own.

Fernet (AES-128-CBC + HMAC-SHA-256, from `cryptography`): a stolen database or backup shows no password
without the key file, which lives under the state dir, 0600, created on first use and never printed. A
hash would not do: the password must be sent to the BMC again at every call.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from appliance.errors import ConfigError, DroverError

log = logging.getLogger(__name__)

KEY_FILE = "secret.key"


class SecretError(DroverError):
    """A stored secret cannot be read back: the key file changed or the row was tampered with."""


class SecretBox:
    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._fernet: Fernet | None = None

    @classmethod
    def under(cls, state_dir: Path) -> SecretBox:
        return cls(state_dir / KEY_FILE)

    def _key(self) -> Fernet:
        if self._fernet is None:
            self._fernet = Fernet(_load_or_create(self.key_path))
        return self._fernet

    def seal(self, secret: str) -> str:
        return self._key().encrypt(secret.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._key().decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, ValueError):
            raise SecretError(
                f"a stored secret cannot be decrypted with {self.key_path}",
                "the key file was replaced or the database comes from another appliance: set the password again",
            ) from None


def _load_or_create(path: Path) -> bytes:
    """The key, made once with O_EXCL (two appliance processes starting together agree on one key)."""
    try:
        key = Fernet.generate_key()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the secret key {path}: {exc.strerror}") from None
    else:
        try:
            os.write(fd, key)
        finally:
            os.close(fd)
        log.info("created the appliance's secret key %s", path)
        return key
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)  # an older copy or a restore left it readable: narrow it
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret key {path}: {exc.strerror}") from None
    if not data:
        raise ConfigError(f"the secret key {path} is empty",
                          "restore it from a backup, or remove it and set every BMC password again")
    return data
