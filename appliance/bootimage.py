"""The node image the boot service serves: find and check it, and publish another (`drover boot use`).

The served directory is [boot] image_dir, by default the symlink <state_dir>/images/current. It is
looked up on every request, so re-pointing the symlink switches the image without restarting
`drover serve`. Only names listed in the directory's manifest.json are ever served.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config
from appliance.errors import Conflict, DroverError, NotFound, UsageError
from image import manifest
from image.manifest import MANIFEST, PAYLOAD, Manifest

log = logging.getLogger(__name__)


class ImageUnavailable(DroverError):
    """No usable image to boot nodes from: the boot service answers 503 until an admin publishes one."""

    exit_code = 4
    http_status = 503


@dataclass(frozen=True)
class BootImage:
    directory: Path  # symlinks resolved: one request sees one image even if `boot use` runs meanwhile
    manifest: Manifest

    def artifact(self, name: str) -> tuple[Path, os.stat_result]:
        """The file for a manifest-listed artifact name, or NotFound; never anything outside the directory."""
        parts = name.split("/")
        if name not in self.manifest.artifacts or name == MANIFEST or any(p in ("", ".", "..") for p in parts):
            raise NotFound(f"no artifact {name!r} in the served image", f"one of: {', '.join(self.names())}")
        # Resolved, and served by that name: a symlink put into the image directory (by whoever can write
        # there) must not hand out a file from elsewhere, whatever its name in the manifest.
        path = self.directory.joinpath(*parts).resolve()
        if not path.is_relative_to(self.directory):
            log.warning("boot image %s: %s leads outside the image (to %s); not served", self.directory, name, path)
            raise NotFound(f"no artifact {name!r} in the served image", "its file is a link out of the image directory")
        try:
            st = path.stat()
        except OSError:
            raise ImageUnavailable(f"boot image {self.directory}: {name} is missing") from None
        expected = self.manifest.artifacts[name].size
        if st.st_size != expected:
            raise ImageUnavailable(
                f"boot image {self.directory}: {name} is {st.st_size} bytes, its manifest says {expected}",
                "re-publish a complete image: drover boot use DIR --verify",
            )
        return path, st

    def names(self) -> list[str]:
        return sorted(self.manifest.artifacts)


def load(directory: Path) -> BootImage:
    """A complete image directory: its manifest loads and lists kernel, initrd and squashfs."""
    resolved = directory.resolve()
    found = manifest.load(resolved)
    missing = [name for name in PAYLOAD if name not in found.artifacts]
    if missing:
        raise UsageError(f"{resolved}/{MANIFEST}: does not list {', '.join(missing)}", "not a PXE-bootable image")
    return BootImage(resolved, found)


def current(cfg: Config) -> BootImage:
    """The image to serve now, or ImageUnavailable saying why there is none."""
    directory = cfg.boot_image_dir
    if not directory.exists():
        raise ImageUnavailable(
            f"no boot image: {directory} does not exist", "publish a built image: drover boot use DIR"
        )
    try:
        return load(directory)
    except (NotFound, UsageError) as exc:
        raise ImageUnavailable(f"boot image {directory}: {exc.message}", "drover boot use DIR") from None


def publish(cfg: Config, directory: Path, *, verify: bool = False) -> BootImage:
    """Check `directory` and point the boot service at it (an atomic symlink swap)."""
    image = load(directory)
    for name in PAYLOAD:
        image.artifact(name)  # present, with the manifest's size
    if verify:
        bad = image.manifest.verify(image.directory)
        if bad:
            raise UsageError(f"{image.directory}: artifacts differ from the manifest: {', '.join(bad)}")
    link = cfg.boot_image_dir
    if link.exists() and not link.is_symlink():
        if link.resolve() == image.directory:
            return image  # [boot] image_dir already names this very directory
        raise Conflict(
            f"{link} is a directory, not a symlink drover manages",
            "set [boot] image_dir to the image directory instead, or remove it",
        )
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(image.directory)
    tmp.replace(link)  # rename(2): a request sees the old image or the new one, never none
    log.info("boot service now serves %s", image.directory)
    return image
