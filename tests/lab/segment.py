"""A shared L2 segment of the test's own: a network namespace holding a bridge that qemu nodes' extra NICs
(tap devices) are plugged into, and from which the test can talk to the nodes on tagged VLANs.

qemu opens its tap by name in this (the root) namespace; the tap is then moved into the segment's namespace
and made a bridge port, which qemu's open file descriptor survives. Nothing in the root namespace is left
configured: the taps leave it, and deleting the namespace deletes them, the bridge and its VLANs.

For `make demo` (tests/lab/demo.py, issue 13's live migration between its two PXE nodes): boot each node as
tests/test_networks_pxe.py's `_boot` does (qemu's user network stays the management link; one or two taps on
one Segment give the nodes a shared L2), then as the admin: `drover network create mig --role migration
--vlan 50 --subnet 10.50.0.0/24`, `drover host network node1 --set mig --nic enp0s2 --address 10.50.0.1`
(node2: .2), `drover network create demo-net` + `--set demo-net --nic enp0s2` on both and `vm create
--network demo-net`; wait for `drover host network NODE` to say "in sync", then `drover vm migrate demo-vm
--host node2`: the task engine sends the memory stream to tcp://10.50.0.2 over the segment (the libvirt
connections stay the appliance's, through each node's forwarded port: a managed migration). The nodes
reach each other only on the segment; nothing on this machine's own network changes.
"""

from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass, field

from appliance.runner import run

BRIDGE = "seg0"

# argv: bridge, target IPv4, VLAN id (0: untagged), timeout, sender IPv4. Prints the answering MAC; exit 1
# when none. The sender should be on the target's subnet: Linux checks the sender's reverse path first.
# The kernel hands received frames over untagged, the tag in PACKET_AUXDATA: checked there.
ARP_PROBE = """
import socket, struct, sys, time
dev, target, vid, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
sender = socket.inet_aton(sys.argv[5])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
s.bind((dev, 0))
mac = s.getsockname()[4]
tip = socket.inet_aton(target)
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, sender, bytes(6), tip)
tag = struct.pack("!HH", 0x8100, vid) if vid else b""
frame = b"\\xff" * 6 + mac + tag + struct.pack("!H", 0x0806) + arp
deadline = time.monotonic() + timeout
s.settimeout(0.3)
next_send = 0.0
while time.monotonic() < deadline:
    if time.monotonic() >= next_send:
        s.send(frame)
        next_send = time.monotonic() + 0.5
    try:
        data, anc, flags, addr = s.recvmsg(2048, 256)
    except socket.timeout:
        continue
    got_vid = 0
    for level, kind, blob in anc:
        if level == 263 and kind == 8 and len(blob) >= 20:
            status, _l, _s, _m, _n, tci = struct.unpack("IIIHHH", blob[:18])
            if status & (1 << 4):
                got_vid = tci & 0xFFF
    body = data[14:]
    if data[12:14] == b"\\x81\\x00":
        got_vid = struct.unpack("!H", data[14:16])[0] & 0xFFF
        body = data[18:]
        if data[16:18] != b"\\x08\\x06":
            continue
    elif data[12:14] != b"\\x08\\x06":
        continue
    if len(body) < 28 or struct.unpack("!H", body[6:8])[0] != 2 or body[14:18] != tip or got_vid != vid:
        continue
    print(":".join(f"{b:02x}" for b in body[8:14]))
    sys.exit(0)
sys.exit(1)
"""


@dataclass
class Segment:
    name: str = field(default_factory=lambda: f"dseg-{secrets.token_hex(3)}")
    taps: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        run(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", BRIDGE, "type", "bridge")
        self.ip("link", "set", BRIDGE, "up")

    def ip(self, *argv: str) -> str:
        return run(["ip", "-n", self.name, *argv]).stdout

    def tap_name(self) -> str:
        """A fresh tap name for qemu's `-netdev tap,ifname=...` (at most 15 bytes)."""
        name = f"dt{secrets.token_hex(4)}"
        self.taps.append(name)
        return name

    def plug(self, tap: str, timeout: float = 30.0) -> None:
        """Once qemu has made `tap` in the root namespace: move it here and make it a bridge port."""
        deadline = time.monotonic() + timeout
        while run(["ip", "link", "show", tap], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"qemu made no tap {tap} within {timeout}s")
            time.sleep(0.2)
        run(["ip", "link", "set", tap, "netns", self.name])
        self.ip("link", "set", tap, "master", BRIDGE)
        self.ip("link", "set", tap, "up")

    def arp(self, address: str, vid: int = 0, timeout: float = 3.0, sender: str = "169.254.77.1") -> str:
        """Ask "who has `address`?" on the segment, tagged with VLAN `vid` (0: untagged); the MAC that
        answered on that VLAN, or "".

        This machine's kernel has no 802.1Q, bonding or bridge VLAN filtering, so the test's end of a tagged
        network is a raw packet socket speaking tagged ARP (ARP_PROBE below) inside the namespace.
        """
        done = run(["ip", "netns", "exec", self.name, sys.executable, "-c", ARP_PROBE, BRIDGE, address, str(vid),
                    str(timeout), sender], check=False)  # fmt: skip
        return done.stdout.strip() if done.returncode == 0 else ""

    def close(self) -> None:
        run(["ip", "netns", "delete", self.name], check=False)
        for tap in self.taps:  # a tap qemu made but we never moved
            run(["ip", "link", "delete", tap], check=False)
