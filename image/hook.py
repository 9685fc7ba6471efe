"""mmdebstrap hooks of the debian flavour: `python -m image.hook setup|customize ROOT WORKDIR`.

mmdebstrap runs them on the build host with the chroot in ROOT; WORKDIR holds what debian.py
prepared (recipe.json, the overlay tree) and receives the kernel, the initrd and the package list.
Their output goes to mmdebstrap's, which the progress display reads ("drover:" lines are stages).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from appliance.runner import run

# Units enabled in the image; networkd + resolved because the node has no other network manager.
ENABLED_UNITS = (
    "systemd-networkd.service",
    "systemd-resolved.service",
    "drover-agent.service",
    "drover-boot-marker.service",
)
# Never wanted on a RAM-only node: the contents of these directories go after the packages are in.
PRUNED_PATHS = (
    "boot",  # kernel and initrd are artifacts of their own, not part of the root
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/lib/udev/hwdb.d",  # the hwdb's sources: without them systemd-hwdb-update has nothing to do
    "usr/lib/firmware",  # no firmware is kept: virtio, e1000 & co need none
    "var/cache/apt",
    "var/cache/debconf/templates.dat-old",
    "var/lib/apt/lists",
)
# Single files never needed: qemu's microvm-only binary (libvirt does not use it), dpkg's checksums.
PRUNED_FILES = (
    "usr/bin/qemu-system-x86_64-microvm",
    "usr/libexec/qemu-system-i386",  # i686 guests run on qemu-system-x86_64 as well
    "usr/lib/udev/hwdb.bin",  # 13 MB of device names and quirks for desktops; udev boots without it
)
PRUNED_GLOBS = (
    "var/lib/dpkg/info/*.md5sums",
    "var/lib/dpkg/info/*.list",  # file lists: `dpkg -L` goes, `dpkg-query -W` (the manifest's source) stays
    "usr/lib/python3.11/pydoc_data",
    # qemu firmware for machines that are not x86
    "usr/share/qemu/skiboot.lid",
    "usr/share/qemu/slof.bin",
    "usr/share/qemu/openbios-*",
    "usr/share/qemu/hppa-firmware.img",
    "usr/share/qemu/palcode-*",
    "usr/share/qemu/opensbi-*",
    "usr/share/qemu/s390-*",
    "usr/share/qemu/u-boot*",
    "usr/share/qemu/qemu_vga.ndrv",
    "usr/share/qemu/*.dtb",
    "usr/share/qemu/npcm7xx*",
    "usr/share/qemu/vof*",
)
# glibc's iconv converters: UTF-8 and Latin-1 are built in; keep the other Unicode ones, drop 8 MB of legacy charsets.
GCONV_DIR = "usr/lib/x86_64-linux-gnu/gconv"
GCONV_KEPT = (
    "gconv-modules",
    "gconv-modules.cache",
    "gconv-modules.d",
    "UNICODE.so",
    "UTF-16.so",
    "UTF-32.so",
    "UTF-7.so",
)
# Only the files go: packages ship their log directories and their daemons expect them to exist.
EMPTIED_LOG_DIR = "var/log"


def say(text: str) -> None:
    print(f"drover: {text}", flush=True)


def kernel_version(root: Path) -> str:
    mods = root / "usr/lib/modules"
    versions = sorted(p.name for p in mods.iterdir()) if mods.is_dir() else []
    if len(versions) != 1:
        raise SystemExit(f"drover: expected one kernel in {mods}, found {versions}")
    return versions[0]


def chroot(root: Path, *argv: str) -> str:
    return run(["chroot", str(root), *argv], env={"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}).stdout


def setup(root: Path, work: Path) -> None:
    """Before any package is installed: the kernel's postinst runs dracut, which must see our config."""
    shutil.copytree(work / "setup", root, dirs_exist_ok=True, symlinks=True)


def _module_kept(rel: str, kept: list[str], pruned: list[str]) -> bool:
    # Compare without the compression suffix so "fs/mbcache.ko" also names "fs/mbcache.ko.xz".
    name = rel
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)

    def under(prefixes: list[str]) -> bool:
        return any(name == p or name.startswith(p.rstrip("/") + "/") for p in prefixes)

    return under(kept) and not under(pruned)


def prune_modules(root: Path, kver: str, kept: list[str], pruned: list[str]) -> tuple[int, int]:
    """Delete every module that is neither on the kept list nor needed by one; returns (kept, removed).

    The dependencies come from the kernel package's own modules.dep (all modules present), so a kept
    module never loses what it links against (kvm needs irqbypass, libata needs scsi_mod, ...).
    """
    moddir = root / "usr/lib/modules" / kver
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    wanted = [m for m in deps if _module_kept(m.removeprefix("kernel/"), kept, pruned)]
    keep: set[str] = set()
    while wanted:
        mod = wanted.pop()
        if mod not in keep:
            keep.add(mod)
            wanted += deps.get(mod, [])
    base = moddir / "kernel"
    removed = 0
    for path in sorted(base.rglob("*.ko*")):
        if path.relative_to(moddir).as_posix() not in keep:
            path.unlink()
            removed += 1
    for path in sorted(base.rglob("*"), reverse=True):  # empty directories left behind
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return len(keep), removed


OMIT_CONF = "etc/dracut.conf.d/92-drover-omit.conf"
# dracut's network and dm modules copy every driver below these into the initrd; only the
# INITRD_DRIVERS list (and what it depends on) should go there.
INITRD_TRIMMED = ("kernel/drivers/net/", "kernel/drivers/md/", "kernel/net/")


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def initrd_omissions(root: Path, kver: str, wanted: list[str]) -> list[str]:
    """Modules under INITRD_TRIMMED that are neither in `wanted` nor a dependency of one."""
    deps: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for line in (root / "usr/lib/modules" / kver / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        name = _module_name(mod)
        paths[name] = mod
        deps[name] = [_module_name(d) for d in rest.split()]
    needed: set[str] = set()
    todo = [w.replace("-", "_") for w in wanted]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += deps.get(name, [])
    return sorted(n for n, p in paths.items() if p.startswith(INITRD_TRIMMED) and n not in needed)


def customize(root: Path, work: Path) -> None:
    recipe = json.loads((work / "recipe.json").read_text())
    kver = kernel_version(root)
    say(f"kernel {kver}")

    say("installing the node agent, units and network config")
    shutil.copytree(work / "overlay", root, dirs_exist_ok=True, symlinks=True)
    chroot(root, "systemctl", "enable", *ENABLED_UNITS)
    # Bytecode now: compiling the agent at every boot costs seconds under TCG, on the way to enrolment.
    chroot(root, "python3", "-m", "compileall", "-q", "/usr/lib/python3/dist-packages/nodeagent")
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    # No static hostname: every node boots this same image, so its name is the one DHCP gives it
    # (networkd sets the transient hostname only while the static one is empty).
    (root / "etc/hostname").write_text("")
    # Empty machine-id: systemd makes a fresh one each boot, as a stateless node should.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)

    say("pruning kernel modules")
    kept, removed = prune_modules(root, kver, recipe["kept_modules"], recipe["pruned_below_kept"])
    say(f"kept {kept} kernel modules, removed {removed}")
    chroot(root, "depmod", "-a", kver)
    omitted = initrd_omissions(root, kver, recipe["initrd_drivers"])
    (root / OMIT_CONF).write_text(
        "# Written by drover's build: kept network, md and protocol modules the initrd does not need.\n"
        f'omit_drivers+=" {" ".join(omitted)} "\n'
    )

    say(f"building the initrd (dracut), {len(omitted)} network/md/protocol modules left out")
    chroot(root, "dracut", "--force", "--kver", kver, f"/boot/initrd.img-{kver}")
    out = work / "boot"
    out.mkdir(exist_ok=True)
    shutil.copyfile(root / "boot" / f"vmlinuz-{kver}", out / "vmlinuz")
    shutil.copyfile(root / "boot" / f"initrd.img-{kver}", out / "initrd.img")
    (out / "kernel-version").write_text(kver + "\n")

    say("removing build-only packages")
    installed = set(chroot(root, "dpkg-query", "-W", "-f=${Package}\n").split())
    purge = [p for p in recipe["build_only"] if p in installed]
    if purge:
        chroot(root, "dpkg", "--purge", "--force-depends", *purge)
    (out / "packages.tsv").write_text(chroot(root, "dpkg-query", "-W", r"-f=${Package}\t${Version}\n"))

    say("pruning docs, locales, firmware and caches")
    for rel in PRUNED_PATHS:
        target = root / rel
        if target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif target.exists():
            target.unlink()
    for rel in PRUNED_FILES:
        (root / rel).unlink(missing_ok=True)
    for pattern in PRUNED_GLOBS:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    gconv = root / GCONV_DIR
    if gconv.is_dir():
        for child in gconv.iterdir():
            if child.name not in GCONV_KEPT and child.is_file():
                child.unlink()
    for path in (root / EMPTIED_LOG_DIR).rglob("*"):
        if path.is_file() or path.is_symlink():
            path.unlink()
    say("customize done")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("setup", "customize"):
        print("usage: python -m image.hook setup|customize ROOT WORKDIR", file=sys.stderr)
        return 2
    phase, root, work = argv[0], Path(argv[1]), Path(argv[2])
    os.umask(0o022)
    (setup if phase == "setup" else customize)(root, work)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
