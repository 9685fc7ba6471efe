"""node.iso: one hybrid image that boots from CD or as a USB disk, with BIOS and with UEFI.

grub-mkrescue does the hybrid work: an El Torito BIOS image plus grub's MBR (so a stick boots on
BIOS) and an appended EFI system partition (so UEFI firmware boots CD and stick alike).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from image import bootfiles
from image.steps import Step


def _place(src: Path, dst: Path) -> None:
    """Hard link when possible: the squashfs is ~100 MB and would otherwise be copied for nothing."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


CMDLINE_FILE = "iso-cmdline"


def stamp_and_uuid(when: float | None = None) -> tuple[str, str]:
    """xorriso's --modification-date stamp and the ISO 9660 UUID it gives (what blkid reports)."""
    t = time.gmtime(when)
    return time.strftime("%Y%m%d%H%M%S00", t), time.strftime("%Y-%m-%d-%H-%M-%S-00", t)


def prepare_tree(tree: Path, artifacts: Path, iso_uuid: str) -> None:
    """The ISO's contents: kernel and initrd for grub, the squashfs where dmsquash-live looks for it."""
    if tree.exists():
        shutil.rmtree(tree)
    _place(artifacts / "vmlinuz", tree / "boot/vmlinuz")
    _place(artifacts / "initrd.img", tree / "boot/initrd.img")
    _place(artifacts / "rootfs.squashfs", tree / "LiveOS/squashfs.img")
    grub = tree / "boot/grub/grub.cfg"
    grub.parent.mkdir(parents=True, exist_ok=True)
    grub.write_text(bootfiles.grub_config(iso_uuid=iso_uuid))
    (tree.parent / CMDLINE_FILE).write_text(" ".join(bootfiles.media_cmdline(iso_uuid=iso_uuid)))


def step(tree: Path, artifacts: Path) -> Step:
    iso = artifacts / "node.iso"
    stamp, iso_uuid = stamp_and_uuid()
    return Step(
        name="hybrid ISO (grub-mkrescue)",
        argv=(
            "grub-mkrescue",
            f"--output={iso}",
            # No translations, fonts or themes: a serial/text menu needs none of them.
            "--locales=",
            "--fonts=",
            "--themes=",
            "--compress=xz",
            str(tree),
            # The rest goes to xorriso (as mkisofs): the label, and the date that becomes the
            # file system's UUID, which the kernel command line names so only this file system matches.
            "-volid",
            bootfiles.ISO_LABEL,
            f"--modification-date={stamp}",
        ),
        watch=iso,
        prepare=lambda: prepare_tree(tree, artifacts, iso_uuid),
    )
