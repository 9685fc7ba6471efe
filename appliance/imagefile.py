"""What kind of disk image a file is: qcow2, raw or an ISO 9660 disc; anything else is refused.

Read from the file's own bytes (and `qemu-img info` for a second opinion on qcow2 and raw), never from its
name: a template import must not store a VMDK or a text file as if it were a disk.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path

from appliance.db.models import VolumeFormat
from appliance.errors import CommandFailed, UsageError
from appliance.runner import run

QCOW2_MAGIC = b"QFI\xfb"
ISO_MAGIC = b"CD001"
ISO_MAGIC_OFFSET = 0x8001  # the primary volume descriptor, sector 16 (+1 for its type byte)
SECTOR = 512


class ImageKind(enum.StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"
    ISO = "iso"

    @property
    def volume_format(self) -> VolumeFormat:
        # An ISO is a raw volume that a guest sees as a CD-ROM.
        return VolumeFormat.QCOW2 if self is ImageKind.QCOW2 else VolumeFormat.RAW


def detect(path: Path) -> ImageKind:
    """The image kind of `path`, or UsageError saying why it is not a qcow2, raw or ISO image."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(ISO_MAGIC_OFFSET)
            iso = f.read(len(ISO_MAGIC))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if size == 0:
        raise UsageError(f"{path} is empty", "a template needs a qcow2, raw or ISO image")
    if head == QCOW2_MAGIC:
        info = _qemu_img_info(path)
        if info.get("format") != "qcow2":
            raise UsageError(f"{path} starts like a qcow2 image but qemu-img cannot read it as one")
        return ImageKind.QCOW2
    if iso == ISO_MAGIC:
        return ImageKind.ISO
    fmt = _qemu_img_info(path).get("format")
    if fmt != "raw":
        raise UsageError(
            f"{path} is a {fmt} image, not qcow2, raw or ISO", f"convert it: qemu-img convert -O qcow2 {path} OUT"
        )
    if size % SECTOR:
        raise UsageError(
            f"{path} is not a qcow2, raw or ISO image ({size} bytes: a raw disk is whole {SECTOR}-byte sectors)",
            "give a qcow2, a raw disk image or an ISO",
        )
    return ImageKind.RAW


def _qemu_img_info(path: Path) -> dict[str, object]:
    try:
        out = run(["qemu-img", "info", "--output=json", str(path)], timeout=60).stdout
    except CommandFailed as exc:
        raise UsageError(f"{path} is not a disk image qemu-img can read: {exc.output.splitlines()[-1:]}") from None
    info: dict[str, object] = json.loads(out)
    return info
