"""The debian flavour: mmdebstrap + dracut (dmsquash-live, livenet) + mksquashfs, then node.iso.

mmdebstrap runs in a private mount namespace (`unshare --mount`): the /proc, /sys and /dev it
mounts into the chroot can then never outlive it in our namespace, so removing a work directory
after an interrupted build cannot reach into the host's /dev.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import image
from image import hook, iso, payload
from image.mirror import Mirror
from image.profile import DEBIAN_BUILD_ONLY, DEBIAN_SUITE, PRUNED_BELOW_KEPT, Recipe
from image.steps import Step

PY_SITE = "usr/lib/python3/dist-packages"
# dpkg never unpacks these: cheaper than deleting them afterwards, and the copyright files stay.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/bash-completion/*",
    "path-exclude=/usr/share/zsh/*",
    "path-exclude=/usr/share/fish/*",
    "path-exclude=/usr/lib/firmware/*",
)


def _hook(phase: str, work: Path) -> str:
    # mmdebstrap runs a hook with `sh -c`, the chroot as "$1"; the hook is this package's Python.
    repo = Path(image.__file__).resolve().parent.parent
    return (
        f"env PYTHONPATH={shlex.quote(str(repo))} {shlex.quote(sys.executable)} "
        f'-m image.hook {phase} "$1" {shlex.quote(str(work))}'
    )


def prepare(recipe: Recipe, work: Path) -> None:
    """Everything the hooks read, written before mmdebstrap starts."""
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "kept_modules": list(recipe.kept_modules),
        "pruned_below_kept": list(PRUNED_BELOW_KEPT),
        "build_only": list(DEBIAN_BUILD_ONLY),
        "initrd_drivers": list(recipe.initrd_drivers),
    }
    (work / "recipe.json").write_text(json.dumps(spec, indent=2) + "\n")
    payload.write_tree(work / "setup", payload.dracut_files(recipe.initrd_drivers))
    payload.write_tree(work / "overlay", payload.overlay(PY_SITE))


def _take_boot_files(work: Path, artifacts: Path) -> None:
    artifacts.mkdir(parents=True, exist_ok=True)
    for name in ("vmlinuz", "initrd.img"):
        shutil.move(work / "boot" / name, artifacts / name)


def steps(recipe: Recipe, mirrors: tuple[Mirror, ...], work: Path, artifacts: Path) -> list[Step]:
    root = work / "root"
    squashfs = artifacts / "rootfs.squashfs"
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
            f"--setup-hook={_hook('setup', work)}",
            f"--customize-hook={_hook('customize', work)}",
            DEBIAN_SUITE,
            str(root),
            *(m.spec for m in mirrors),
        ),
        watch=root,
        prepare=lambda: prepare(recipe, work),
        inner=(
            ("chroot", str(root), "systemctl", "enable", *hook.ENABLED_UNITS),
            ("chroot", str(root), "depmod", "-a", "KVER"),
            ("chroot", str(root), "dracut", "--force", "--kver", "KVER", "/boot/initrd.img-KVER"),
            ("chroot", str(root), "dpkg", "--purge", "--force-depends", *DEBIAN_BUILD_ONLY),
            ("chroot", str(root), "dpkg-query", "-W", r"-f=${Package}\t${Version}\n"),
        ),
    )
    squash = Step(
        name=f"squashfs (mksquashfs, {recipe.compression})",
        argv=(
            "mksquashfs",
            str(root),
            str(squashfs),
            "-noappend",
            "-no-progress",
            "-b",
            "1M",
            *recipe.compression.mksquashfs_args(),
        ),
        watch=squashfs,
        prepare=lambda: _take_boot_files(work, artifacts),
    )
    return [bootstrap, squash, iso.step(work / "iso", artifacts)]


def results(work: Path) -> tuple[str, dict[str, str]]:
    """(kernel version, {package: version}) as the customize hook recorded them."""
    kver = (work / "boot/kernel-version").read_text().strip()
    pkgs = {}
    for line in (work / "boot/packages.tsv").read_text().splitlines():
        name, _, version = line.partition("\t")
        if name:
            pkgs[name] = version
    return kver, pkgs
