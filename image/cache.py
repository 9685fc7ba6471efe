"""The build cache: finished artifacts stored under the hash of every input that made them.

An unchanged profile is published from the cache in seconds; any change to the flavour, the package
list, the kept modules, drover's hooks and data files, the node agent or the mirror's sources
content gives a new key and so a real build. Entries appear by rename, so a half-finished build
is never found by a lookup.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from image import payload
from image.manifest import MANIFEST, Manifest
from image.mirror import Mirror
from image.profile import PRUNED_BELOW_KEPT, Flavor, Recipe

# Bumped by hand when the build changes in a way the hashed inputs below do not show.
BUILDER_REVISION = 1
# Entries kept per flavour and profile; older ones are removed after a successful build.
KEEP = 2
# The builder's own modules whose code decides what goes into the image.
_BUILDER_MODULES = ("hook.py", "debian.py", "fedora.py", "iso.py", "profile.py")


def default_dir() -> Path:
    """$XDG_CACHE_HOME/drover, else /var/cache/drover for root, else ~/.cache/drover."""
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "drover"
    if os.geteuid() == 0:
        return Path("/var/cache/drover")
    return Path.home() / ".cache/drover"


def _digest_tree(h: hashlib._Hash, base: Path, files: Iterable[Path]) -> None:
    for path in sorted(files):
        data = path.read_bytes()
        h.update(f"{path.relative_to(base).as_posix()}\0{len(data)}\0".encode())
        h.update(data)


def key(recipe: Recipe, mirrors: tuple[Mirror, ...], kickstart: str = "") -> str:
    """sha256 over every input of a build (hex)."""
    h = hashlib.sha256()
    h.update(f"drover-image-builder {BUILDER_REVISION}\n".encode())
    spec = asdict(recipe)
    spec["pruned_below_kept"] = list(PRUNED_BELOW_KEPT)
    h.update(json.dumps(spec, sort_keys=True).encode())
    for mirror in mirrors:
        h.update(b"\0mirror\0" + mirror.content().encode())
    data = Path(str(payload.data_dir()))
    _digest_tree(h, data, (p for p in data.rglob("*") if p.is_file() and "__pycache__" not in p.parts))
    _digest_tree(h, payload.agent_root(), payload.agent_files())
    here = Path(__file__).resolve().parent
    _digest_tree(h, here, (here / name for name in _BUILDER_MODULES))
    h.update(b"\0kickstart\0" + kickstart.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    path: Path
    manifest: Manifest


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def images(self) -> Path:
        return self.root / "images"

    def entry_dir(self, flavor: Flavor, profile: str, cache_key: str) -> Path:
        return self.images / f"{flavor}-{profile}-{cache_key[:16]}"

    def lookup(self, recipe: Recipe, cache_key: str) -> Entry | None:
        path = self.entry_dir(recipe.flavor, recipe.profile, cache_key)
        manifest = path / MANIFEST
        if not manifest.is_file():
            return None
        try:
            found = Manifest.from_json(manifest.read_text())
        except (ValueError, KeyError, TypeError):
            return None
        return Entry(path, found) if found.cache_key == cache_key else None

    def workdir(self, cache_key: str) -> Path:
        """A fresh directory for one build, on the cache's file system so entries can be renamed in."""
        work = self.root / "work" / f"{cache_key[:16]}-{os.getpid()}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        return work

    def commit(self, recipe: Recipe, cache_key: str, built: Path) -> Path:
        """Rename a finished artifact directory (manifest written last) into the cache."""
        target = self.entry_dir(recipe.flavor, recipe.profile, cache_key)
        self.images.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        built.rename(target)
        self._trim(recipe, keep=target)
        return target

    def _trim(self, recipe: Recipe, keep: Path) -> None:
        prefix = f"{recipe.flavor}-{recipe.profile}-"
        entries = sorted(
            (p for p in self.images.iterdir() if p.name.startswith(prefix) and p != keep),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in entries[KEEP - 1 :]:
            shutil.rmtree(old, ignore_errors=True)

    def entries(self) -> list[Entry]:
        found = []
        if self.images.is_dir():
            for path in sorted(self.images.iterdir()):
                if (path / MANIFEST).is_file():
                    try:
                        found.append(Entry(path, Manifest.from_json((path / MANIFEST).read_text())))
                    except (ValueError, KeyError, TypeError):
                        continue
        return found
