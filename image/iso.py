"""node.iso: one hybrid image that boots from CD or as a USB disk, with BIOS and with UEFI.

grub-mkrescue does the hybrid work: an El Torito BIOS image plus grub's MBR (so a stick boots on
BIOS) and an appended EFI system partition (so UEFI firmware boots CD and stick alike).
"""

from __future__ import annotations

import os
import shutil
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


def prepare_tree(tree: Path, artifacts: Path) -> None:
    """The ISO's contents: kernel and initrd for grub, the squashfs where dmsquash-live looks for it."""
    if tree.exists():
        shutil.rmtree(tree)
    _place(artifacts / "vmlinuz", tree / "boot/vmlinuz")
    _place(artifacts / "initrd.img", tree / "boot/initrd.img")
    _place(artifacts / "rootfs.squashfs", tree / "LiveOS/squashfs.img")
    grub = tree / "boot/grub/grub.cfg"
    grub.parent.mkdir(parents=True, exist_ok=True)
    grub.write_text(bootfiles.grub_config())


def step(tree: Path, artifacts: Path) -> Step:
    iso = artifacts / "node.iso"
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
            # The rest goes to xorriso: the label the initrd finds the squashfs by.
            "-volid",
            bootfiles.ISO_LABEL,
        ),
        watch=iso,
        prepare=lambda: prepare_tree(tree, artifacts),
    )
