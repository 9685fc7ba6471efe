"""Kernel command lines and the boot files that carry them: boot.ipxe, pxelinux.cfg/default, grub.cfg.

The appliance renders per-MAC scripts with the same functions, adding its own arguments
(`drover.appliance=URL drover.token=... drover.ca=sha256:...`) through `extra_args`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from appliance.errors import UsageError

# The ISO's volume label; the initrd finds node.iso (CD or USB stick) by it.
ISO_LABEL = "DROVER-NODE"
# iPXE variable a chaining script may set to point at the artifacts; the default is the DHCP next-server.
IPXE_BASE_VAR = "drover-base"
IPXE_DEFAULT_BASE = "http://${next-server}/drover"

# dmsquash-live: copy the squashfs into RAM and put a tmpfs overlay on it, so the node needs no disk.
LIVE_ARGS = ("rd.live.ram=1", "rd.live.overlay.overlayfs=1")
CONSOLE_ARGS = ("console=tty0", "console=ttyS0,115200")
# An argument is one token: no blanks (they would split it) and no characters iPXE, pxelinux or
# grub would interpret, so an appliance-supplied value cannot inject a boot-script command.
_ARG = re.compile(r"[A-Za-z0-9_.:/=,+@%~^-]+")


def check_args(args: Sequence[str]) -> tuple[str, ...]:
    for arg in args:
        if not _ARG.fullmatch(arg):
            raise UsageError(f"kernel argument {arg!r} has characters a boot script cannot carry")
    return tuple(args)


def network_cmdline(base_url: str, extra_args: Sequence[str] = ()) -> list[str]:
    """The PXE command line: dracut's livenet fetches <base_url>/rootfs.squashfs over HTTP."""
    return [
        f"root=live:{base_url}/rootfs.squashfs",
        *LIVE_ARGS,
        "ip=dhcp",
        "rd.neednet=1",
        *CONSOLE_ARGS,
        *check_args(extra_args),
    ]


def media_cmdline(extra_args: Sequence[str] = (), iso_uuid: str | None = None) -> list[str]:
    """The node.iso command line: the squashfs is LiveOS/squashfs.img on the CD or stick.

    By UUID when known: on a USB stick the hybrid image also carries an HFS+ partition (grub's Mac
    boot) with the same label, and udev may point by-label at that one instead of the ISO 9660.
    """
    return [
        f"root=live:UUID={iso_uuid}" if iso_uuid else f"root=live:CDLABEL={ISO_LABEL}",
        "rd.live.image",
        *LIVE_ARGS,
        *CONSOLE_ARGS,
        *check_args(extra_args),
    ]


def ipxe_script(base_url: str | None = None, extra_args: Sequence[str] = ()) -> str:
    """boot.ipxe; without base_url the script uses ${drover-base}, defaulting to the next-server."""
    if base_url is None:
        head = f"isset ${{{IPXE_BASE_VAR}}} || set {IPXE_BASE_VAR} {IPXE_DEFAULT_BASE}\n"
        base = f"${{{IPXE_BASE_VAR}}}"
    else:
        head, base = "", check_args([base_url])[0].rstrip("/")
    cmdline = " ".join(network_cmdline(base, extra_args))
    return (
        "#!ipxe\n"
        "# drover node: kernel and initrd over HTTP, the initrd fetches the root into RAM\n"
        f"{head}"
        f"kernel {base}/vmlinuz initrd=initrd.img {cmdline}\n"
        f"initrd {base}/initrd.img\n"
        "boot\n"
    )


def pxelinux_config(base_url: str, extra_args: Sequence[str] = ()) -> str:
    """pxelinux.cfg/default: kernel and initrd over TFTP beside it, the squashfs over HTTP from base_url."""
    base = check_args([base_url])[0].rstrip("/")
    return (
        "# drover node (pxelinux: kernel and initrd over TFTP, root over HTTP)\n"
        "DEFAULT drover\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "SERIAL 0 115200\n"
        "LABEL drover\n"
        "  KERNEL vmlinuz\n"
        "  INITRD initrd.img\n"
        f"  APPEND {' '.join(network_cmdline(base, extra_args))}\n"
    )


def grub_config(extra_args: Sequence[str] = (), iso_uuid: str | None = None) -> str:
    """grub.cfg inside node.iso, for BIOS and UEFI alike; serial and screen both work."""
    return (
        "# drover node: boots the same kernel, initrd and squashfs from CD or USB stick\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input console serial\n"
        "terminal_output console serial\n"
        "set timeout=1\n"
        'menuentry "drover node" {\n'
        f"  linux /boot/vmlinuz {' '.join(media_cmdline(extra_args, iso_uuid))}\n"
        "  initrd /boot/initrd.img\n"
        "}\n"
    )
