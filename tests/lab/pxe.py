"""Lab nodes that PXE-boot the node image from a real appliance's boot service, in qemu.

qemu's user network gives each guest DHCP (with the node's hostname and domain, as a site's DHCP
server would) and a TFTP root holding one line of iPXE that chains to the appliance's
/boot/boot.ipxe; everything else (per-MAC script with a one-time token, kernel, initrd, squashfs)
comes from the appliance over HTTP at 10.0.2.2. The node's libvirtd port is forwarded to a loopback
address of its own, which the node's FQDN maps to in an nss_wrapper hosts file (LabHosts), so
qemu+tcp://<fqdn>/system and the service principal libvirt/<fqdn> match as on a real network.

Used by the PXE enrolment test, the boot benchmark and `make demo`.
"""

from __future__ import annotations

import enum
import random
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.lab.accel import Accel
from tests.lab.appliance import LabAppliance
from tests.lab.qemu import HOST_FROM_GUEST, Guest, UserNet, start_guest
from tests.lab.segment import Segment

LIBVIRT_PORT = 16509
# What the appliance reaches on a node, forwarded to the node's own loopback address: libvirtd, and the first
# VNC displays (qemu's autoport starts at 5900) for the appliance's console proxy.
NODE_PORTS = (LIBVIRT_PORT, 5900, 5901, 5902, 5903)
_UUIDS = uuid.UUID("5f0c2b1e-8d3a-4c57-9e21-6b7a0f4d3c10")  # namespace: the same node gets the same DMI UUID


@dataclass(frozen=True)
class PxeNode:
    name: str  # short host name, handed out by DHCP
    domain: str
    mac: str
    uuid: str  # DMI system UUID: what makes a rebooted node the same host
    address: str  # loopback address its libvirtd port is forwarded to

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.domain}"

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.fqdn}/system"

    def segment_mac(self, index: int) -> str:
        """The MAC of its extra NIC number `index` (from 1) on a Segment: fixed per node, so reboots match."""
        return f"52:54:00:5e:{int(self.mac[-2:], 16):02x}:{index:02x}"

    @classmethod
    def numbered(cls, n: int, domain: str, address: str, prefix: str = "node") -> PxeNode:
        """Node `n` (1..255) of a set: the same n always gets the same MAC and UUID (reruns, reboots)."""
        name = f"{prefix}{n}"
        return cls(name, domain, f"52:54:00:d0:{n // 256:02x}:{n % 256:02x}", str(uuid.uuid5(_UUIDS, name)), address)


def vouch_for(served: LabAppliance, node: PxeNode, admin: str = "pxe-vouch") -> None:
    """What an admin does before powering a new machine on: an enrolment window for its MAC alone (outside a
    window the boot service gives an unknown MAC no token, and the node would wait as pending)."""
    granted = served.drover("user", "add", admin, "--role", "admin")
    assert granted.returncode == 0, granted.stdout + granted.stderr
    opened = served.drover("host", "enrol", "--window", "15m", "--mac", node.mac, principal=admin)
    assert opened.returncode == 0, opened.stdout + opened.stderr


def tftp_root(node: PxeNode, workdir: Path, boot_port: int) -> Path:
    """The node's TFTP root: one line of iPXE chaining to the appliance's boot service."""
    tftp = workdir / f"{node.name}.tftp"
    tftp.mkdir(parents=True, exist_ok=True)
    (tftp / "boot.ipxe").write_text(f"#!ipxe\ndhcp\nchain http://{HOST_FROM_GUEST}:{boot_port}/boot/boot.ipxe\n")
    return tftp


def free_address(low: int = 100, high: int = 199, tries: int = 50) -> str:
    """A loopback address 127.0.0.low..high whose NODE_PORTS nothing holds now: qemu refuses to start when a
    forward's port is taken, and two nodes of parallel tests on one random address clashed (1 in 100)."""
    address = f"127.0.0.{random.randint(low, high)}"
    for _ in range(tries):
        if all(_bindable(address, port) for port in NODE_PORTS):
            return address
        address = f"127.0.0.{random.randint(low, high)}"
    return address


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def user_net(node: PxeNode) -> UserNet:
    """Its DHCP lease names it; libvirtd's port and the first VNC displays are forwarded to its own address."""
    return UserNet(node.name, node.domain, tuple((node.address, port, port) for port in NODE_PORTS))


def boot(
    node: PxeNode,
    workdir: Path,
    boot_port: int,
    accel: Accel,
    *,
    tag: str = "",
    memory_mb: int = 1024,
    uefi: bool = False,
    segment: Segment | None = None,
    segment_nics: int = 1,
) -> Guest:
    """Power the node on: firmware PXE -> iPXE -> the appliance's boot service.

    uefi: OVMF instead of SeaBIOS. qemu then loads the NIC's EFI iPXE ROM (ipxe-qemu's efi-virtio.rom), whose
    network boot runs the same TFTP script as the BIOS ROM does.
    segment: `segment_nics` more NICs (MACs node.segment_mac(1..)), taps plugged into that L2 segment; the boot
    NIC stays qemu's user network, the node's management link."""
    taps = [segment.tap_name() for _ in range(segment_nics)] if segment is not None else []
    extra: list[str] = []
    for i, tap in enumerate(taps):
        extra += ["-netdev", f"tap,id=s{i},ifname={tap},script=no,downscript=no",
                  "-device", f"virtio-net-pci,netdev=s{i},mac={node.segment_mac(i + 1)}"]  # fmt: skip
    guest = start_guest(
        node.name + tag,
        workdir,
        accel=accel,
        memory_mb=memory_mb,
        tftp_dir=tftp_root(node, workdir, boot_port),
        net=user_net(node),
        mac=node.mac,
        uuid=node.uuid,
        uefi=uefi,
        extra_qemu=extra,
    )
    for tap in taps:
        assert segment is not None
        segment.plug(tap)
    return guest


class Phase(enum.IntEnum):
    """How far a node's boot got, from its serial console (iPXE itself prints nothing there)."""

    FIRMWARE = 0  # PXE, iPXE, downloading the kernel and initrd
    KERNEL = 1
    INITRD = 2  # dracut: fetching the squashfs into RAM
    SYSTEM = 3  # systemd on the real root
    AGENT = 4  # the node agent has talked to the appliance
    LOGIN = 5  # the getty's login prompt

    @property
    def label(self) -> str:
        return {
            Phase.FIRMWARE: "firmware / iPXE",
            Phase.KERNEL: "kernel",
            Phase.INITRD: "initrd, fetching the root image",
            Phase.SYSTEM: "systemd",
            Phase.AGENT: "agent enrolling",
            Phase.LOGIN: "login prompt",
        }[self]


_PHASES = (
    (Phase.LOGIN, re.compile(r"\blogin: ")),
    (Phase.AGENT, re.compile(r"nodeagent: (identified|appliance )")),
    (Phase.SYSTEM, re.compile(r"Welcome to .*Debian GNU/Linux \d+ \(\w+\)(?!.*Initramfs)")),
    (Phase.INITRD, re.compile(r"Initramfs")),
    (Phase.KERNEL, re.compile(r"Linux version ")),
)
LOGIN_PROMPT = _PHASES[0][1]


def phase(serial: str) -> Phase:
    """The furthest phase the serial output shows."""
    for found, pattern in _PHASES:
        if pattern.search(serial):
            return found
    return Phase.FIRMWARE


@dataclass
class BootClock:
    """Two clocks from one polling loop, both from qemu's start: -> login prompt, -> host available."""

    guest: Guest
    available: Callable[[], bool]
    login: float | None = None
    enrolled: float | None = None

    def tick(self) -> bool:
        """Look once; True when both have been seen."""
        now = time.monotonic() - self.guest.started
        if self.login is None and LOGIN_PROMPT.search(self.guest.serial()):
            self.login = now
        if self.enrolled is None and self.available():
            self.enrolled = now
        return self.login is not None and self.enrolled is not None

    @property
    def ratio(self) -> float:
        assert self.login is not None and self.enrolled is not None
        return self.enrolled / self.login
