"""Lab guests: the host's Debian kernel plus a busybox-static initramfs built here, as a libvirt domain.

A real guest must boot in seconds under TCG, so it is the smallest thing that runs Linux: the
kernel straight from /boot (direct kernel boot, no firmware, no disk) and a one-file initramfs
whose /init prints a marker and then a counter to the first serial port, which libvirt (or qemu)
writes to a plain file the test reads.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from appliance.errors import ToolMissing
from appliance.runner import run

BUSYBOX = Path("/bin/busybox")
# What /init prints first, and every second after that: tests wait for these lines.
BOOT_MARKER = "DROVER-GUEST-UP"
TICK = "DROVER-TICK"
ECHO = "DROVER-ECHO"  # a line typed into the serial console, answered
POWEROFF = "DROVER-POWEROFF"  # printed when the guest powers off on the ACPI power button
# With `drover.dirty=N` on its command line the guest keeps rewriting N MiB of random bytes in RAM (a busy
# guest whose memory a migration has to send again and again), and prints this once it has started.
DIRTY = "DROVER-DIRTY"
PING = "DROVER-PING"  # the answer to a "ping ADDRESS" line typed into the serial console: "DROVER-PING ADDRESS ok|fail"
NET = "DROVER-NET"  # printed once per NIC after boot: "DROVER-NET eth0 MAC"
# Kernel modules (relative to /lib/modules/<version>/kernel) the guest loads, in this order (each after the
# ones it needs): the ACPI power button, then virtio-pci and virtio-net for the NICs a VM may have.
_MODULES = (
    "drivers/acpi/button.ko", "drivers/input/evdev.ko",
    "drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko", "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci.ko",
    "net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko",
)  # fmt: skip

_INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
echo "{BOOT_MARKER} $(/bin/busybox cat /proc/cmdline)" > /dev/ttyS0
if /bin/busybox grep -q drover.halt /proc/cmdline; then
    /bin/busybox reboot -f
fi
# ACPI power button (what `virsh shutdown` / drover's shutdown press): an event on the Power Button's
# input device powers the guest off, when the kernel's button and evdev modules came with the initramfs.
/bin/busybox mount -t sysfs sys /sys
for m in /lib/modules/*.ko; do [ -f "$m" ] && /bin/busybox insmod "$m" 2>/dev/null; done
# NICs: up, with the IPv6 link-local address the kernel derives from the MAC (fe80::/64, EUI-64) and nothing
# else: no DHCP server or configuration needed for two guests on one L2 network to reach each other.
for n in /sys/class/net/eth*; do
    [ -e "$n" ] || continue
    /bin/busybox ip link set "${{n##*/}}" up
    echo "{NET} ${{n##*/}} $(/bin/busybox cat "$n/address")" > /dev/ttyS0
done
for ev in /sys/class/input/event*; do
    /bin/busybox grep -q "Power Button" "$ev/device/name" 2>/dev/null || continue
    # evdev hands out whole events (24 bytes on 64-bit) or nothing.
    (/bin/busybox dd if="/dev/input/${{ev##*/}}" of=/dev/null bs=24 count=1 2>/dev/null &&
     echo "{POWEROFF}" > /dev/ttyS0 && /bin/busybox poweroff -f) &
done
# The serial console's input: each line typed into it comes back as "DROVER-ECHO <line>" (console tests type);
# "ping ADDRESS" pings it (3 tries, 2 s each) and answers "DROVER-PING ADDRESS ok" or "... fail".
(while read -r line; do
    case "$line" in
        "ping "*)
            to="${{line#ping }}"
            if /bin/busybox ping -c 3 -W 2 "$to" >/dev/null 2>&1; then r=ok; else r=fail; fi
            echo "{PING} $to $r" > /dev/ttyS0;;
        *) echo "{ECHO} $line" > /dev/ttyS0;;
    esac
done < /dev/ttyS0) &
# A memory-dirtying guest: N MiB of random bytes in the initramfs (RAM), rewritten in place for ever.
for w in $(/bin/busybox cat /proc/cmdline); do
    case "$w" in drover.dirty=*) dirty="${{w#drover.dirty=}}";; esac
done
if [ -n "$dirty" ]; then
    /bin/busybox dd if=/dev/urandom of=/dirty bs=1048576 count="$dirty" 2>/dev/null
    (while true; do /bin/busybox dd if=/dirty of=/dirty bs=1048576 conv=notrunc 2>/dev/null; done) &
    echo "{DIRTY} $dirty" > /dev/ttyS0
fi
n=0
while true; do
    n=$((n + 1))
    echo "{TICK} $n" > /dev/ttyS0
    /bin/busybox sleep 1
done
"""


def host_kernel() -> Path:
    """The newest Debian kernel in /boot; the linux-image-amd64 package provides one."""
    found = sorted(glob.glob("/boot/vmlinuz-*"), key=os.path.getmtime)
    # Debian installs vmlinuz 0600 on some releases: qemu runs as root here, so only existence matters.
    if not found:
        raise ToolMissing("no kernel in /boot for lab guests", "install it: apt-get install linux-image-amd64")
    return Path(found[-1])


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    """One record of the "newc" cpio format the kernel unpacks as an initramfs."""
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def _modules(kernel: Path | None) -> list[tuple[str, bytes]]:
    """The modules of `kernel`'s version (power button, virtio NIC) as /lib/modules/NN-<name>.ko; none if absent."""
    if kernel is None:
        return []
    version = kernel.name.removeprefix("vmlinuz-")
    found = []
    for n, rel in enumerate(_MODULES):
        path = Path("/lib/modules") / version / "kernel" / rel
        if path.is_file():  # numbered: /init loads them in glob order, which must be this order
            found.append((f"lib/modules/{n:02d}-{path.name}", path.read_bytes()))
    return found


def build_initramfs(path: Path, kernel: Path | None = None) -> Path:
    """Write a ~2 MB initramfs (busybox-static + /init) to `path`, without cpio or root tricks."""
    if not BUSYBOX.is_file():
        raise ToolMissing(f"{BUSYBOX} not found", "install it: apt-get install busybox-static")
    entries = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("dev", stat.S_IFDIR | 0o755, b""),
        ("proc", stat.S_IFDIR | 0o755, b""),
        ("sys", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        ("init", stat.S_IFREG | 0o755, _INIT.encode()),
    ]
    modules = _modules(kernel)
    if modules:
        entries += [("lib", stat.S_IFDIR | 0o755, b""), ("lib/modules", stat.S_IFDIR | 0o755, b"")]
        entries += [(name, stat.S_IFREG | 0o644, data) for name, data in modules]
    blob = b"".join(_cpio_entry(name, mode, data, ino) for ino, (name, mode, data) in enumerate(entries, 1))
    blob += _cpio_entry("TRAILER!!!", 0)
    path.write_bytes(blob)
    return path


@dataclass(frozen=True)
class GuestImage:
    """Kernel + initramfs a lab guest boots from; build once per session and share."""

    kernel: Path
    initrd: Path

    @classmethod
    def build(cls, directory: Path) -> GuestImage:
        directory.mkdir(parents=True, exist_ok=True)
        kernel = host_kernel()
        return cls(kernel, build_initramfs(directory / "initrd.cpio", kernel))


def cmdline(*extra: str) -> str:
    # quiet + no ACPI probing noise: under TCG every message on the serial console costs time.
    return " ".join(["console=ttyS0", "quiet", "panic=-1", "rdinit=/init", *extra])


def domain_xml(
    name: str,
    image: GuestImage,
    serial_log: Path,
    domain_type: str = "qemu",
    memory_mib: int = 128,
    extra_cmdline: tuple[str, ...] = (),
) -> str:
    """A domain with no disk and no NIC: direct kernel boot, serial console into `serial_log`.

    `serial_log` is a path as the node's libvirtd sees it; the lab's node bind-mounts only
    libvirt's own directories, so a path under the test's tmp dir is the same file on both sides.
    """
    return f"""<domain type='{domain_type}'>
  <name>{escape(name)}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(cmdline(*extra_cmdline))}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='{escape(str(serial_log))}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def wait_for_text(path: Path, text: str, timeout: float) -> str:
    """Poll a serial log until it contains `text`; return the whole log, or TimeoutError with its tail."""
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.is_file() else ""
        if text in content:
            return content
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in {path} after {timeout}s; last output:\n{content[-2000:]}")
        time.sleep(0.1)


_GRUB_CFG = """serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "drover guest" {{
    linux /boot/vmlinuz {cmdline}
    initrd /boot/initrd.cpio
}}
"""


def iso_path(directory: Path) -> Path:
    """Where build_iso() puts the ISO: named after what goes into it, so a changed /init is a new file."""
    recipe = "\n".join([_INIT, _GRUB_CFG, cmdline(), *_MODULES, host_kernel().name])
    return directory / f"drover-guest-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.iso"


def link_local(mac: str) -> str:
    """The IPv6 link-local address (modified EUI-64) the guest's kernel gives the NIC with this MAC."""
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 0x02
    words = [b[0] << 8 | b[1], b[2] << 8 | 0xFF, 0xFE << 8 | b[3], b[4] << 8 | b[5]]
    return "fe80::" + ":".join(f"{w:x}" for w in words)


def build_iso(directory: Path) -> Path:
    """A ~15 MB hybrid ISO (BIOS only) of the lab guest: grub on the serial port, the host's kernel and the
    busybox initramfs. Hybrid, so it boots as a CD and as a plain disk: a template volume attached to a VM
    as its read-only boot disk. Built once into `directory` and reused (the file is the cache)."""
    iso = iso_path(directory)
    if iso.is_file():
        return iso
    tree = directory / "iso-tree"
    (tree / "boot/grub").mkdir(parents=True, exist_ok=True)
    kernel = host_kernel()
    (tree / "boot/vmlinuz").write_bytes(kernel.read_bytes())
    build_initramfs(tree / "boot/initrd.cpio", kernel)
    (tree / "boot/grub/grub.cfg").write_text(_GRUB_CFG.format(cmdline=cmdline()))
    partial = iso.with_suffix(".partial")
    # i386-pc only: no EFI partition (and no mtools) for a guest that boots with SeaBIOS.
    run(["grub-mkrescue", "-d", "/usr/lib/grub/i386-pc", f"--output={partial}", "--locales=", "--fonts=",
         "--themes=", "--compress=xz", str(tree)], timeout=300)  # fmt: skip
    partial.rename(iso)
    return iso
