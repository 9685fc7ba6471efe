"""The debian node image for real: built (or cached), PXE-booted and USB-booted in qemu, interrupted.

The boot marker is a unit inside the image (drover-boot-marker.service) that prints, after
multi-user, where / lives, which disks exist and which are mounted, and the memory in use.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.runner import run
from image import cache
from image.manifest import BUILT, MANIFEST, load
from tests.lab.accel import detect
from tests.lab.image import NodeImage, build_node_image, http_server, pxe_tftp_dir
from tests.lab.qemu import Guest, start_guest

MARKER = r"DROVER-BOOT (?P<facts>[^\r\n]*uptime=\S+)"
BOOT_TIMEOUT = 300
ROOT = Path(__file__).resolve().parent.parent


def facts(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split())


def assert_root_in_ram(seen: dict[str, str]) -> None:
    assert seen["root"] == "overlay:LiveOS_rootfs", seen
    assert seen["run_fs"] == "tmpfs", seen  # the overlay's upper layer and the squashfs copy live here
    assert seen["upper"].startswith("/run/"), seen
    backing = [loop.split(":", 1)[1] for loop in seen["loops"].split(",")]
    assert any(path.startswith("/run/initramfs/") for path in backing), seen  # squashfs copied into RAM
    assert seen["disk_mounts"] == "none", seen
    assert seen["multi_user"] == "active", seen


def test_artifacts_and_manifest(node_image: NodeImage) -> None:
    m = node_image.manifest
    for name in (*BUILT, "boot.ipxe", "pxelinux.cfg/default", MANIFEST):
        assert node_image.path(name).is_file(), name
    assert m.verify(node_image.dir) == []
    assert m.kernel_version.endswith("-amd64")
    for package in ("libvirt-daemon-system", "qemu-system-x86", "libsasl2-modules-gssapi-mit", "krb5-user"):
        assert package in m.packages, package
    for package in ("collectd-core", "python3-libvirt", "python3-gssapi", "python3-zeroconf", "python3-pyinotify"):
        assert package in m.packages, package
    assert "dracut" not in m.packages  # build-only, purged after the initrd was made
    assert "rd.live.ram=1" in m.kernel_cmdline


def test_iso_is_hybrid_for_bios_and_uefi(node_image: NodeImage) -> None:
    """El Torito images for BIOS and UEFI (CD), grub's MBR and a GPT EFI partition (USB stick)."""
    report = run(
        ["xorriso", "-indev", str(node_image.path("node.iso")), "-report_el_torito", "plain", "-report_system_area",
         "plain"]
    ).stdout
    assert "Volume id    : 'DROVER-NODE'" in report
    assert re.search(r"El Torito boot img :\s+\d+\s+BIOS\s+y", report), report
    assert re.search(r"El Torito boot img :\s+\d+\s+UEFI\s+y", report), report
    assert "grub2-mbr" in report and "GPT" in report
    assert "EFI boot partition" in report


def test_unchanged_profile_comes_from_the_cache(node_image: NodeImage, tmp_path: Path) -> None:
    started = time.monotonic()
    again = build_node_image(tmp_path / "again")
    assert time.monotonic() - started < 60
    assert again.manifest.cache_key == node_image.manifest.cache_key
    for name in BUILT:
        assert again.manifest.artifacts[name] == node_image.manifest.artifacts[name]


@pytest.mark.boot
@pytest.mark.timeout(BOOT_TIMEOUT, func_only=True)
def test_pxe_boot_into_ram(node_image: NodeImage, tmp_path: Path, guests: list[Guest]) -> None:
    accel = detect()
    with http_server(node_image.dir) as http:
        tftp = pxe_tftp_dir(tmp_path / "tftp", http.url_for_guest(), ["drover.test=pxe"])
        guest = start_guest("pxe", tmp_path, accel=accel, tftp_dir=tftp)
        guests.append(guest)
        found, seconds = guest.wait_for(MARKER, BOOT_TIMEOUT - 20)
    seen = facts(found.group("facts"))
    print(f"PXE boot to marker: {seconds:.0f}s ({accel}), {seen}")
    assert_root_in_ram(seen)
    assert seen["disks"] == "none", seen  # diskless: no block device at all
    assert {"/vmlinuz", "/initrd.img", "/rootfs.squashfs"} <= set(http.requests)
    assert "drover.test=pxe" in guest.serial()  # the extra kernel argument reached the kernel


@pytest.mark.boot
@pytest.mark.timeout(BOOT_TIMEOUT, func_only=True)
def test_usb_stick_boot_into_ram(node_image: NodeImage, tmp_path: Path, guests: list[Guest]) -> None:
    accel = detect()
    guest = start_guest("usb", tmp_path, accel=accel, usb_stick=node_image.path("node.iso"))
    guests.append(guest)
    found, seconds = guest.wait_for(MARKER, BOOT_TIMEOUT - 20)
    seen = facts(found.group("facts"))
    print(f"USB boot to marker: {seconds:.0f}s ({accel}), {seen}")
    assert_root_in_ram(seen)
    assert seen["disks"] == "sda", seen  # the stick is there, but nothing is mounted from it


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", *argv],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_full_disk_leaves_no_complete_looking_output(node_image: NodeImage, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=20m", "drover-test-tiny", str(tiny)])
    try:
        proc = _cli("image", "build", "--out", str(tiny))
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, out + err
        assert "drover: error: no space left on device" in err
        assert sorted(p.name for p in tiny.iterdir()) == []  # no manifest, no staging dir, no partial files
    finally:
        run(["umount", str(tiny)])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.timeout(180)
def test_interrupted_build_cleans_up(tmp_path: Path, sig: signal.Signals) -> None:
    """A real (uncached) build stopped while mmdebstrap runs: exit 130, nothing left behind."""
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    proc = _cli("image", "build", "--force", "--cache-dir", str(cache_dir), "--out", str(out))
    deadline = time.monotonic() + 120
    # Wait until mmdebstrap has made the chroot (it then has mounts and children to clean up).
    while not (cache_dir / "work").is_dir() or not any((cache_dir / "work").glob("*/root/usr")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "[1/5] bootstrap (mmdebstrap)" in err  # the progress display named the stage it was in
    assert "drover: interrupted" in err
    assert not (out / MANIFEST).exists()
    assert not list(out.glob(".drover-staging-*")) if out.exists() else True
    assert list((cache_dir / "work").iterdir()) == []  # the chroot is gone
    assert not (cache.Cache(cache_dir).images).exists()
    leftover = run(["pgrep", "-f", f"mmdebstrap.*{cache_dir}"], check=False)
    assert leftover.stdout.strip() == "", leftover.stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(cache_dir) not in mounts


def test_show_the_built_image(node_image: NodeImage) -> None:
    proc = _cli("image", "show", str(node_image.dir), "--verify")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"kernel:       {node_image.manifest.kernel_version}" in out
    assert "verified" in out
    assert load(node_image.dir) == node_image.manifest
