"""mmdebstrap's customize hook for the guest profile: `python -m image.guesthook ROOT WORKDIR`.

Runs on the build host with the finished chroot in ROOT. It trims the kernel's modules to GUEST_MODULES,
rebuilds the initramfs with only what finds the root (MODULES=list), points cloud-init at the NoCloud seed
alone, enables networkd, and moves the kernel and initramfs out to WORKDIR/boot (they go onto the disk's boot
partition, not the root). WORKDIR/recipe.json says which modules; WORKDIR/boot receives the package list.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from image.hook import EMPTIED_LOG_DIR, PRUNED_PATHS, chroot, kernel_version, prune_modules, say

# cloud-init looks only for drover's seed: probing for EC2/OpenStack metadata servers costs minutes of
# timeouts on a network without them. One SSH host key type: RSA key generation under TCG takes seconds.
# networkd renders and applies the network config (the image has no ifupdown, which Debian's default picks
# first); C.UTF-8 is the one locale a guest without the locales package has.
CLOUD_CFG = """\
# drover guest image: the NoCloud seed (a disk labelled cidata) is the only data source.
datasource_list: [NoCloud, None]
ssh_genkeytypes: [ed25519]
locale: C.UTF-8
system_info:
  network:
    renderers: [networkd]
    activators: [networkd]
"""
# Without DHCP on the guest's network, networkd-wait-online (which cloud-init.service waits for) would hold the
# boot for two minutes; one configured link is enough, and 20 s is long enough to get it.
WAIT_ONLINE = """\
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=20
"""
INITRAMFS_CONF = """\
# drover guest image: only the modules listed in modules.d/drover-guest, zstd.
MODULES=list
COMPRESS=zstd
"""
ENABLED_UNITS = ("systemd-networkd.service",)
# Timers and jobs a short-lived test VM or a small cloud guest does not want waking it up.
# binfmt_misc: no foreign binaries to run, and its module is not kept.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
                "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount")  # fmt: skip


def customize(root: Path, work: Path) -> None:
    recipe = json.loads((work / "recipe.json").read_text())
    kver = kernel_version(root)
    say(f"kernel {kver}")

    say("pruning kernel modules")
    kept, removed = prune_modules(root, kver, recipe["kept_modules"], recipe["pruned_below_kept"])
    say(f"kept {kept} kernel modules, removed {removed}")
    chroot(root, "depmod", "-a", kver)

    say("building the initramfs (initramfs-tools, MODULES=list)")
    (root / "etc/initramfs-tools/conf.d/drover-guest.conf").write_text(INITRAMFS_CONF)
    modules_d = root / "usr/share/initramfs-tools/modules.d"
    modules_d.mkdir(parents=True, exist_ok=True)
    (modules_d / "drover-guest").write_text("\n".join(recipe["initrd_drivers"]) + "\n")
    chroot(root, "update-initramfs", "-c", "-k", kver)

    say("cloud-init, networkd and units")
    (root / "etc/cloud/cloud.cfg.d/90-drover.cfg").write_text(CLOUD_CFG)
    dropin = root / "etc/systemd/system/systemd-networkd-wait-online.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "drover.conf").write_text(WAIT_ONLINE)
    chroot(root, "systemctl", "enable", *ENABLED_UNITS)
    chroot(root, "systemctl", "mask", *MASKED_UNITS)
    # Every VM made from this image is a new machine: its id and host name come at first boot (cloud-init
    # sets the host name from the seed's local-hostname); the ssh host keys are cloud-init's to make.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (root / "etc/hostname").write_text("localhost\n")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()

    out = work / "boot"
    out.mkdir(exist_ok=True)
    shutil.move(root / "boot" / f"vmlinuz-{kver}", out / "vmlinuz")
    shutil.move(root / "boot" / f"initrd.img-{kver}", out / "initrd.img")
    (out / "kernel-version").write_text(kver + "\n")
    (out / "packages.tsv").write_text(chroot(root, "dpkg-query", "-W", r"-f=${Package}\t${Version}\n"))

    say("pruning docs, locales, caches and the boot directory")
    for rel in PRUNED_PATHS:
        target = root / rel
        if target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    for path in (root / EMPTIED_LOG_DIR).rglob("*"):
        if path.is_file() or path.is_symlink():
            path.unlink()
    say("customize done")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m image.guesthook ROOT WORKDIR", file=sys.stderr)
        return 2
    os.umask(0o022)
    customize(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
