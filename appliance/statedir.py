"""The appliance's private files: the state dir 0700, the SQLite database files 0600, from the first run
on and on upgrade (an older drover made them 0755/0644).

The database holds hosts, users, roles and token hashes; the state dir the realm's keys. Only the
appliance's own user reads them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from appliance.errors import ConfigError

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def secure_dir(path: Path) -> None:
    """Create `path` (and missing parents) 0700, or narrow it to 0700; ConfigError when it cannot."""
    try:
        missing = [p for p in [path, *path.parents] if not p.exists()]
        for directory in reversed(missing):
            directory.mkdir(mode=DIR_MODE, exist_ok=True)
        _narrow(path, DIR_MODE)
    except OSError as exc:
        raise ConfigError(
            f"cannot create or secure the state dir {path}: {exc.strerror}",
            "set DROVER_STATE_DIR (or state_dir) to a directory this user may create",
        ) from None


def narrow_dir(path: Path) -> None:
    """An existing state dir narrowed to 0700 (an upgrade from an older drover); a missing one is left alone."""
    if path.is_dir():
        secure_dir(path)


def secure_sqlite(database: Path) -> None:
    """Create the database file 0600 before SQLite does (it would follow the umask), or narrow it and
    its WAL, shared-memory and journal files to 0600; SQLite gives new WAL files the database's mode."""
    if not database.exists():
        os.close(os.open(database, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    for suffix in SQLITE_SUFFIXES:
        path = database.with_name(database.name + suffix)
        if path.exists():
            _narrow(path, FILE_MODE)


def _narrow(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        path.chmod(current & mode)
        log.info("narrowed %s from %o to %o", path, current, current & mode)
