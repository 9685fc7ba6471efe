"""The guest profile: a small Debian VM disk (cloud-init + qemu guest agent) as one qcow2 file, guest.qcow2.

mmdebstrap makes the root in a directory; the disk is then put together without mounting anything (no loop
devices, so it builds inside containers too): a FAT boot partition holding the kernel, the initramfs and
SYSLINUX (mtools-based installer), an ext4 root made from the directory by `mkfs.ext4 -d`, an MBR (SYSLINUX's boot code,
the partition table written here), and `qemu-img convert -c` to a compressed qcow2 that `drover template import` takes.
The kernel command line is the root and `console=ttyS0`: drover's VMs log their first serial port.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import struct
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

import image
from appliance.runner import run
from image.cache import BUILDER_REVISION
from image.debian import DPKG_EXCLUDES
from image.mirror import Mirror
from image.profile import DEBIAN_SUITE, PRUNED_BELOW_KEPT, Recipe
from image.steps import Step

DISK = "guest.qcow2"
SECTOR = 512
BOOT_START = 2048  # sectors: the usual 1 MiB alignment
BOOT_MIB = 64  # kernel (~8 MB) + initramfs (~10 MB) with room for one more of each
# Free space on the root beyond what the packages fill; a VM wanting more gets a bigger disk of its own.
ROOT_SPARE_MIB = 512
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")  # syslinux-common
# What the guest boots with (root= is added with the build's file system UUID).
CMDLINE = "ro console=ttyS0"


def key(recipe: Recipe, mirrors: tuple[Mirror, ...]) -> str:
    """sha256 over every input of a guest build: the recipe, the mirrors and this builder's own code (not the
    node agent's, which a guest does not carry)."""
    h = hashlib.sha256()
    h.update(f"drover-guest-builder {BUILDER_REVISION}\n".encode())
    spec = asdict(recipe)
    spec["pruned_below_kept"] = list(PRUNED_BELOW_KEPT)
    h.update(json.dumps(spec, sort_keys=True).encode())
    for mirror in mirrors:
        h.update(b"\0mirror\0" + mirror.content().encode())
    here = Path(__file__).resolve().parent
    for name in ("guest.py", "guesthook.py", "hook.py"):
        h.update(f"\0{name}\0".encode() + (here / name).read_bytes())
    return h.hexdigest()


def _hook(work: Path) -> str:
    repo = Path(image.__file__).resolve().parent.parent
    return (
        f"env PYTHONPATH={shlex.quote(str(repo))} {shlex.quote(sys.executable)} "
        f'-m image.guesthook "$1" {shlex.quote(str(work))}'
    )


def prepare(recipe: Recipe, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    spec = {"kept_modules": list(recipe.kept_modules), "pruned_below_kept": list(PRUNED_BELOW_KEPT),
            "initrd_drivers": list(recipe.initrd_drivers)}  # fmt: skip
    (work / "recipe.json").write_text(json.dumps(spec, indent=2) + "\n")


def _mib_used(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total // (1 << 20) + 1


def mbr(code: bytes, parts: list[tuple[int, int, int, bool]]) -> bytes:
    """A master boot record: boot code, then (start sector, sectors, type, bootable) entries in LBA form (the
    CHS fields say "beyond 8 GB", as every tool writes them today), then the 0x55AA signature."""
    table = b""
    for start, sectors, kind, bootable in parts:
        table += struct.pack("<B3sB3sII", 0x80 if bootable else 0, b"\xfe\xff\xff", kind, b"\xfe\xff\xff",
                             start, sectors)  # fmt: skip
    return code.ljust(446, b"\0") + table.ljust(64, b"\0") + b"\x55\xaa"


def assemble(work: Path) -> Path:
    """The raw disk in work/disk.raw: MBR + FAT boot + ext4 root, from work/root and work/boot."""
    root, boot = work / "root", work / "boot"
    fs_uuid = str(uuid.uuid4())
    (root / "etc/fstab").write_text(f"UUID={fs_uuid} / ext4 defaults,errors=remount-ro 0 1\n")
    root_mib = (_mib_used(root) * 5) // 4 + ROOT_SPARE_MIB
    root_img, boot_img, raw = work / "root.ext4", work / "boot.fat", work / "disk.raw"
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", fs_uuid, "-d", str(root), "-E", "root_owner=0:0",
         str(root_img), f"{root_mib}M"])  # fmt: skip
    run(["mkfs.vfat", "-n", "BOOT", "-C", str(boot_img), str(BOOT_MIB * 1024)])
    (boot / "syslinux.cfg").write_text(
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  LINUX /vmlinuz\n  INITRD /initrd.img\n"
        f"  APPEND root=UUID={fs_uuid} {CMDLINE}\n"
    )
    (work / "cmdline").write_text(f"root=UUID={fs_uuid} {CMDLINE}")
    run(["mcopy", "-i", str(boot_img), str(boot / "vmlinuz"), str(boot / "initrd.img"), str(boot / "syslinux.cfg"),
         "::/"])  # fmt: skip
    run(["syslinux", "--install", str(boot_img)])
    boot_sectors = BOOT_MIB * 2048
    root_start = BOOT_START + boot_sectors
    root_sectors = root_mib * 2048
    with raw.open("wb") as f:
        f.truncate((root_start + root_sectors) * SECTOR)
    with raw.open("r+b") as f:
        f.write(mbr(SYSLINUX_MBR.read_bytes()[:440], [(BOOT_START, boot_sectors, 0x0C, True),
                                                        (root_start, root_sectors, 0x83, False)]))  # fmt: skip
    for part, start in ((boot_img, BOOT_START), (root_img, root_start)):
        run(["dd", f"if={part}", f"of={raw}", "bs=1M", f"seek={start * SECTOR}", "oflag=seek_bytes",
             "conv=notrunc,sparse", "status=none"])  # fmt: skip
        part.unlink()
    shutil.rmtree(root)  # the qcow2 is made from the raw disk; the tree is not needed any more
    return raw


def steps(recipe: Recipe, mirrors: tuple[Mirror, ...], work: Path, artifacts: Path) -> list[Step]:
    root = work / "root"
    disk = artifacts / DISK
    bootstrap = Step(
        name="bootstrap (mmdebstrap)",
        argv=(
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            "--format=directory",
            '--aptopt=APT::Install-Recommends "false"',
            *(f"--dpkgopt={rule}" for rule in DPKG_EXCLUDES),
            f"--include={','.join(recipe.packages)}",
            f"--customize-hook={_hook(work)}",
            DEBIAN_SUITE,
            str(root),
            *(m.spec for m in mirrors),
        ),
        watch=root,
        prepare=lambda: prepare(recipe, work),
        inner=(
            ("chroot", str(root), "update-initramfs", "-c", "-k", "KVER"),
            ("chroot", str(root), "systemctl", "enable", "systemd-networkd.service"),
            ("chroot", str(root), "dpkg-query", "-W", r"-f=${Package}\t${Version}\n"),
        ),
    )

    def make_raw() -> None:
        artifacts.mkdir(parents=True, exist_ok=True)
        assemble(work)

    convert = Step(
        name="disk (mkfs.ext4 -d, mkfs.vfat + syslinux, qemu-img convert -c)",
        argv=("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(work / "disk.raw"), str(disk)),
        watch=disk,
        prepare=make_raw,
        inner=(
            ("mkfs.ext4", "-d", str(root), "root.ext4"),
            ("mkfs.vfat", "-C", "boot.fat"),
            ("mcopy", "-i", "boot.fat", "vmlinuz", "initrd.img", "syslinux.cfg", "::/"),
            ("syslinux", "--install", "boot.fat"),
            ("dd", "of=disk.raw"),
        ),
    )
    return [bootstrap, convert]


def results(work: Path) -> tuple[str, dict[str, str], str]:
    """(kernel version, {package: version}, kernel command line) of a finished guest build."""
    kver = (work / "boot/kernel-version").read_text().strip()
    pkgs = {}
    for line in (work / "boot/packages.tsv").read_text().splitlines():
        name, _, version = line.partition("\t")
        if name:
            pkgs[name] = version
    return kver, pkgs, (work / "cmdline").read_text()
