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
    "usr/lib/firmware",  # no firmware is kept: virtio, e1000 & co need none
    "var/cache/apt",
    "var/cache/debconf/templates.dat-old",
    "var/lib/apt/lists",
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
    """Delete every module not on the kept list; returns (kept, removed) counts."""
    base = root / "usr/lib/modules" / kver / "kernel"
    counts = [0, 0]
    for path in sorted(base.rglob("*.ko*")):
        keep = _module_kept(path.relative_to(base).as_posix(), kept, pruned)
        counts[0 if keep else 1] += 1
        if not keep:
            path.unlink()
    for path in sorted(base.rglob("*"), reverse=True):  # empty directories left behind
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return counts[0], counts[1]


def customize(root: Path, work: Path) -> None:
    recipe = json.loads((work / "recipe.json").read_text())
    kver = kernel_version(root)
    say(f"kernel {kver}")

    say("installing the node agent, units and network config")
    shutil.copytree(work / "overlay", root, dirs_exist_ok=True, symlinks=True)
    chroot(root, "systemctl", "enable", *ENABLED_UNITS)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    (root / "etc/hostname").write_text("drover-node\n")
    # Empty machine-id: systemd makes a fresh one each boot, as a stateless node should.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)

    say("pruning kernel modules")
    kept, removed = prune_modules(root, kver, recipe["kept_modules"], recipe["pruned_below_kept"])
    say(f"kept {kept} kernel modules, removed {removed}")
    chroot(root, "depmod", "-a", kver)

    say("building the initrd (dracut)")
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
