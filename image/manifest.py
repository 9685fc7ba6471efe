"""manifest.json: what a build produced, checkable without the build host (sizes, sha256, packages)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import NotFound, UsageError
from image.profile import Compression, Flavor, Profile

MANIFEST = "manifest.json"
FORMAT = 1
# The big artifacts a backend builds (cached); boot files are rendered when an output is published.
BUILT = ("vmlinuz", "initrd.img", "rootfs.squashfs", "node.iso")
BOOT_FILES = ("boot.ipxe", "pxelinux.cfg/default")
ARTIFACTS = BUILT + BOOT_FILES
# What the issue calls the payload: everything a PXE-booted node downloads.
PAYLOAD = ("vmlinuz", "initrd.img", "rootfs.squashfs")
# The guest profile builds one VM disk instead (image/guest.py), and has no boot files to render.
GUEST_DISK = "guest.qcow2"


def built(profile: Profile) -> tuple[str, ...]:
    """The artifacts a build of `profile` makes (and the cache keeps)."""
    return (GUEST_DISK,) if profile is Profile.GUEST else BUILT


def boot_files(profile: Profile) -> tuple[str, ...]:
    return BOOT_FILES if profile.is_node() else ()


@dataclass(frozen=True)
class Artifact:
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> Artifact:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return cls(path.stat().st_size, h.hexdigest())


@dataclass(frozen=True)
class Manifest:
    flavor: Flavor
    profile: Profile
    compression: Compression
    kernel_version: str
    kernel_cmdline: str  # the PXE command line, as in boot.ipxe
    iso_cmdline: str
    packages: dict[str, str]
    artifacts: dict[str, Artifact]
    cache_key: str
    built_at: str  # UTC, ISO 8601
    build_seconds: float
    format: int = FORMAT

    @property
    def payload_bytes(self) -> int:
        return sum(self.artifacts[name].size for name in PAYLOAD if name in self.artifacts)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["payload_bytes"] = self.payload_bytes
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data: dict[str, Any] = json.loads(text)
        data.pop("payload_bytes", None)
        if data.get("format") != FORMAT:
            raise UsageError(f"manifest format {data.get('format')!r} is not {FORMAT}")
        data["flavor"] = Flavor(data["flavor"])
        data["profile"] = Profile(data["profile"])
        data["compression"] = Compression(data["compression"])
        data["artifacts"] = {k: Artifact(**v) for k, v in data["artifacts"].items()}
        return cls(**data)

    def verify(self, directory: Path) -> list[str]:
        """Names of artifacts that are missing or differ from the manifest (empty when all match)."""
        bad = []
        for name, expected in self.artifacts.items():
            path = directory / name
            if not path.is_file() or Artifact.of(path) != expected:
                bad.append(name)
        return bad


def load(directory: Path) -> Manifest:
    path = directory / MANIFEST
    if not path.is_file():
        raise NotFound(f"no {MANIFEST} in {directory}", "a directory is complete only once its manifest is written")
    try:
        return Manifest.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a drover image manifest: {exc}") from None


def summary(m: Manifest) -> str:
    mb = 1_000_000
    lines = [
        f"flavor:       {m.flavor}",
        f"profile:      {m.profile}",
        f"kernel:       {m.kernel_version}",
        f"built:        {m.built_at} in {m.build_seconds:.0f}s ({m.compression if m.profile.is_node() else 'qcow2'})",
        f"packages:     {len(m.packages)}",
        (f"payload:      {m.payload_bytes / mb:.1f} MB (vmlinuz + initrd.img + rootfs.squashfs)" if m.profile.is_node()
         else f"disk:         {GUEST_DISK}: `drover template import` it"),
        f"cmdline:      {m.kernel_cmdline}",
        "artifacts:",
    ]
    for name in (*ARTIFACTS, GUEST_DISK):
        if name in m.artifacts:
            a = m.artifacts[name]
            lines.append(f"  {name:<22} {a.size / mb:8.1f} MB  sha256:{a.sha256[:16]}")
    return "\n".join(lines) + "\n"
