"""Where the debian flavour gets its packages: the build host's own enabled apt sources, or --mirror.

mmdebstrap takes a sources file as its MIRROR argument and pastes it into the chroot, so the
node is built from exactly the archive (or local mirror, or proxy) this host already trusts and
no archive host name has to live in drover.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import UsageError

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class Mirror:
    """One MIRROR argument for mmdebstrap: a sources file path or a URL/`deb ...` line as given."""

    spec: str

    @property
    def path(self) -> Path | None:
        path = Path(self.spec)
        return path if path.is_absolute() and path.is_file() else None

    def content(self) -> str:
        """What the cache key hashes: the file's text (its entries, not its name), or the spec itself."""
        return self.path.read_text() if self.path is not None else self.spec


def _list_enabled(text: str) -> bool:
    return any(line.split()[:1] in (["deb"], ["deb-src"]) for line in text.splitlines() if not line.startswith("#"))


def _sources_enabled(text: str) -> bool:
    # deb822: a stanza counts when it has Types containing deb and is not `Enabled: no`.
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            return True
    return False


def host_sources(apt_dir: Path = APT_DIR) -> tuple[Mirror, ...]:
    """The host's enabled sources files; files apt itself would skip (other suffixes) are ignored."""
    candidates = [apt_dir / "sources.list"]
    listdir = apt_dir / "sources.list.d"
    if listdir.is_dir():
        candidates += sorted(p for p in listdir.iterdir() if p.suffix in (".list", ".sources"))
    found = []
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        enabled = _sources_enabled(text) if path.suffix == ".sources" else _list_enabled(text)
        if enabled:
            found.append(Mirror(str(path.resolve())))
    return tuple(found)


def resolve(user: tuple[str, ...] = (), apt_dir: Path = APT_DIR) -> tuple[Mirror, ...]:
    """--mirror values (files made absolute) or, without any, the host's sources."""
    if user:
        mirrors = []
        for given in user:
            path = Path(given).expanduser()
            if path.exists():
                if not path.is_file():
                    raise UsageError(f"--mirror {given}: not a file", "give a sources file or a URL")
                mirrors.append(Mirror(str(path.resolve())))
            elif "://" in given or given.startswith("deb "):
                mirrors.append(Mirror(given))
            else:
                raise UsageError(f"--mirror {given!r}: no such file and not a URL")
        return tuple(mirrors)
    found = host_sources(apt_dir)
    if not found:
        raise UsageError(
            f"no enabled apt sources under {apt_dir}",
            "pass --mirror with a sources file or an archive URL",
        )
    return found
