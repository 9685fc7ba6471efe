"""The node's logical networks as systemd-networkd units: bridges, VLANs and bonds, applied with a checkpoint.

The appliance sends the whole set-up (wire.NetworkSetup) with every identify and heartbeat answer; a new
generation is written under /run/systemd/network (the node is stateless: /run is the honest place), applied
with `networkctl reload` (networkd reconfigures exactly the links whose files changed, so the management
NIC is left alone unless the set-up itself moves it), and kept only once a heartbeat reaches the appliance
afterwards. Otherwise, after `rollback_seconds`, the previous files come back, the devices the new set-up
made are deleted, and the node reports `rolled_back` — NetworkManager's checkpoints and oVirt's
setupNetworks connectivity check do the same.

Our files sort before the image's 80-drover-dhcp.network, so a NIC the appliance gives a role is ours and
every other NIC keeps asking for DHCP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeagent import wire
from nodeagent.files import write_atomic
from nodeagent.proc import CommandFailed, run

log = logging.getLogger(__name__)

UNIT_DIR = Path("run/systemd/network")  # under the config root
# Links made from now on answer ARP only for addresses on themselves: without it Linux answers for any of
# its addresses on any interface, and a VM bridge with no address would tell the guests the host's storage
# or migration addresses.
ARP_IGNORE = Path("proc/sys/net/ipv4/conf/default/arp_ignore")
PREFIX = "10-drover-"
MAX_IFNAME = 15
RELOAD_SECONDS = 180


class SetupError(RuntimeError):
    """A set-up this node cannot apply as asked (a NIC it does not have); nothing was changed."""


def vlan_device(carrier: str, vlan: int) -> str:
    name = f"{carrier}.{vlan}"
    if len(name) <= MAX_IFNAME:
        return name
    return f"vl{vlan}-{hashlib.sha256(carrier.encode()).hexdigest()[:6]}"


@dataclass
class _Carrier:
    """A NIC or a bond, with what rides on it."""

    nics: tuple[str, ...]
    bond_mode: str = ""
    untagged: str = ""  # the bridge it is a port of
    vlans: list[tuple[str, int, str]] = field(default_factory=list)  # (device, id, bridge)
    mtu: int = 0


def _unit(sections: list[tuple[str, list[tuple[str, str | int]]]]) -> str:
    out = ["# Written by the drover node agent from the appliance's network set-up; not kept across boots."]
    for name, items in sections:
        if items:
            out += ["", f"[{name}]", *(f"{k}={v}" for k, v in items)]
    return "\n".join(out) + "\n"


def _mtu(mtu: int) -> list[tuple[str, str | int]]:
    return [("MTUBytes", mtu)] if mtu else []


def render(setup: wire.NetworkSetup, macs: Mapping[str, str]) -> dict[str, str]:
    """File name -> content for every unit the set-up needs. `macs`: this node's NICs (name -> MAC)."""
    missing = sorted({n for p in setup.networks for n in p.nics} - set(macs))
    if missing:
        raise SetupError(f"this node has no NIC {', '.join(missing)} (it has {', '.join(sorted(macs)) or 'none'})")
    carriers: dict[str, _Carrier] = {}
    files: dict[str, str] = {}
    for port in setup.networks:
        name = port.bond or port.nics[0]
        c = carriers.setdefault(name, _Carrier(port.nics, port.bond_mode))
        if c.nics != port.nics:
            raise SetupError(f"{name} is asked to be {'+'.join(c.nics)} and {'+'.join(port.nics)}")
        c.mtu = max(c.mtu, port.mtu)
        if port.vlan:
            c.vlans.append((vlan_device(name, port.vlan), port.vlan, port.bridge))
        elif c.untagged:
            raise SetupError(f"{name} carries two untagged networks ({c.untagged} and {port.bridge})")
        else:
            c.untagged = port.bridge
        # The bridge keeps the NIC's MAC when it takes over an untagged NIC: DHCP and neighbours see no change.
        bridge_mac = macs[port.nics[0]] if not port.vlan and not port.bond else ""
        netdev = [("Name", port.bridge), ("Kind", "bridge"), *_mtu(port.mtu)]
        if bridge_mac:
            netdev.append(("MACAddress", bridge_mac))
        files[f"{PREFIX}{port.bridge}.netdev"] = _unit([("NetDev", netdev), ("Bridge", [("STP", "no"),
                                                        ("ForwardDelaySec", 0)])])  # fmt: skip
        network: list[tuple[str, str | int]] = [("ConfigureWithoutCarrier", "yes")]
        if port.boot_protocol == "dhcp":
            network += [("DHCP", "ipv4"), ("LinkLocalAddressing", "no")]
        elif port.boot_protocol == "static" and port.address:
            network += [("Address", port.address), ("LinkLocalAddressing", "no"), ("IPv6AcceptRA", "no")]
            if port.gateway:
                network.append(("Gateway", port.gateway))
        else:
            network += [("LinkLocalAddressing", "no"), ("IPv6AcceptRA", "no")]
        files[f"{PREFIX}{port.bridge}.network"] = _unit(
            [("Match", [("Name", port.bridge)]), ("Link", _mtu(port.mtu)), ("Network", network)]
        )
    for name, c in carriers.items():
        if len(c.nics) > 1 or c.bond_mode:
            files[f"{PREFIX}{name}.netdev"] = _unit([
                ("NetDev", [("Name", name), ("Kind", "bond"), *_mtu(c.mtu)]),
                ("Bond", [("Mode", c.bond_mode or "active-backup"), ("MIIMonitorSec", "100ms")]),
            ])  # fmt: skip
            for nic in c.nics:
                files[f"{PREFIX}{nic}.network"] = _unit(
                    [("Match", [("Name", nic)]), ("Link", _mtu(c.mtu)), ("Network", [("Bond", name)])]
                )
        network = [("LinkLocalAddressing", "no"), ("IPv6AcceptRA", "no"), ("ConfigureWithoutCarrier", "yes")]
        if c.untagged:
            network.append(("Bridge", c.untagged))
        network += [("VLAN", dev) for dev, _, _ in sorted(c.vlans)]
        files[f"{PREFIX}{name}.network"] = _unit(
            [("Match", [("Name", name)]), ("Link", _mtu(c.mtu)), ("Network", network)]
        )
        for dev, vid, bridge in c.vlans:
            mtu = max((p.mtu for p in setup.networks if p.bridge == bridge), default=0)
            files[f"{PREFIX}{dev}.netdev"] = _unit(
                [("NetDev", [("Name", dev), ("Kind", "vlan"), *_mtu(mtu)]), ("VLAN", [("Id", vid)])]
            )
            files[f"{PREFIX}{dev}.network"] = _unit([
                ("Match", [("Name", dev)]), ("Link", _mtu(mtu)),
                ("Network", [("Bridge", bridge), ("LinkLocalAddressing", "no"), ("IPv6AcceptRA", "no"),
                             ("ConfigureWithoutCarrier", "yes")]),
            ])  # fmt: skip
    return files


def _netdevs(files: Mapping[str, str]) -> set[str]:
    return {name[len(PREFIX) : -len(".netdev")] for name in files if name.endswith(".netdev")}


def _matched(files: Mapping[str, str]) -> set[str]:
    return {name[len(PREFIX) : -len(".network")] for name in files if name.endswith(".network")}


class Links:
    """What `ip` says about the node's links (one seam: a test may hand in its own)."""

    def __init__(self, runner: Callable[[list[str]], str] = run) -> None:
        self.run = runner

    def macs(self) -> dict[str, str]:
        """Physical NICs (no link kind of their own; a bond's or bridge's port still counts): name -> MAC.

        A bond rewrites its ports' MACs; `permaddr` keeps the one the NIC was born with.
        """
        out: dict[str, str] = {}
        for link in json.loads(self.run(["ip", "-j", "-d", "link", "show"]) or "[]"):
            kind = (link.get("linkinfo") or {}).get("info_kind")
            if link.get("link_type") == "ether" and not kind and link.get("ifname"):
                out[link["ifname"]] = link.get("permaddr") or link.get("address", "")
        return out

    def observe(self, names: set[str]) -> tuple[wire.NetworkLink, ...]:
        links = json.loads(self.run(["ip", "-j", "-d", "link", "show"]) or "[]")
        addrs = json.loads(self.run(["ip", "-j", "addr", "show"]) or "[]")
        cidrs = {
            a.get("ifname"): tuple(
                f"{i['local']}/{i['prefixlen']}" for i in a.get("addr_info", []) if i.get("family") == "inet"
            )
            for a in addrs
        }
        out = []
        for link in links:
            name = link.get("ifname", "")
            if name not in names:
                continue
            info: dict[str, Any] = link.get("linkinfo") or {}
            out.append(
                wire.NetworkLink(
                    name=name,
                    kind=str(info.get("info_kind", "")) if info.get("info_kind") in ("bridge", "vlan", "bond") else "",
                    master=link.get("master", ""),
                    up="UP" in link.get("flags", []),
                    mtu=int(link.get("mtu", 0)),
                    vlan=int((info.get("info_data") or {}).get("id", 0)) if info.get("info_kind") == "vlan" else 0,
                    addresses=cidrs.get(name, ()),
                )
            )
        return tuple(out)

    def delete(self, name: str) -> None:
        try:
            self.run(["ip", "link", "delete", name])
        except CommandFailed as exc:
            log.info("%s not deleted (gone already?): %s", name, exc)


class Applier:
    """Writes our units and makes networkd apply them; knows which files and devices are ours."""

    def __init__(self, config_root: Path, links: Links, runner: Callable[..., str] = run) -> None:
        self.root = config_root
        self.dir = config_root / UNIT_DIR
        self.links = links
        self.run = runner

    def _arp_ignore(self) -> None:
        path = self.root / ARP_IGNORE
        try:
            if path.read_text().strip() != "1":
                path.write_text("1\n")
        except OSError as exc:
            log.warning("%s: %s", path, exc)

    def current(self) -> dict[str, str]:
        if not self.dir.is_dir():
            return {}
        return {p.name: p.read_text() for p in sorted(self.dir.glob(f"{PREFIX}*"))}

    def switch(self, old: Mapping[str, str], new: Mapping[str, str]) -> None:
        """From `old` (what is on disk) to `new`: write, reload, delete the devices only `old` had."""
        self._arp_ignore()
        for name in set(old) - set(new):
            (self.dir / name).unlink(missing_ok=True)
        for name, text in new.items():
            if old.get(name) != text:
                write_atomic(self.dir / name, text.encode(), 0o644)
        gone = _netdevs(old) - _netdevs(new)
        for dev in sorted(gone, key=lambda d: ("." not in d and not d.startswith("vl"), d)):
            self.links.delete(dev)  # VLANs before the bonds under them; networkd never deletes a netdev
        # networkd answers once it has read every file; on a loaded node still booting that can take a while.
        self.run(["networkctl", "reload"], timeout=RELOAD_SECONDS)
        # NICs that left a bond or a bridge fall back to the image's DHCP file; nudge them in case reload
        # saw no file of theirs change (a bond's NIC whose bond was deleted above).
        freed = sorted((_matched(old) - _matched(new)) - gone)
        if freed:
            existing = set(self.links.macs())
            for nic in freed:
                if nic in existing:
                    try:
                        self.run(["networkctl", "reconfigure", nic])
                    except CommandFailed as exc:
                        log.warning("reconfiguring %s: %s", nic, exc)


def wanted_links(setup: wire.NetworkSetup) -> set[str]:
    names: set[str] = set()
    for p in setup.networks:
        carrier = p.bond or p.nics[0]
        names |= {p.bridge, carrier, *p.nics}
        if p.vlan:
            names.add(vlan_device(carrier, p.vlan))
    return names


def settled(setup: wire.NetworkSetup, links: tuple[wire.NetworkLink, ...]) -> bool:
    """Every bridge, bond and VLAN is there with its static address: worth reporting (and confirming)."""
    by = {link.name: link for link in links}
    for p in setup.networks:
        bridge = by.get(p.bridge)
        if bridge is None or (p.address and p.address not in bridge.addresses):
            return False
        if p.bond and by.get(p.bond) is None:
            return False
        if p.vlan and by.get(vlan_device(p.bond or p.nics[0], p.vlan)) is None:
            return False
    return True


class Keeper:
    """Applies each new generation once: checkpoint, apply, confirm by a heartbeat, else restore."""

    def __init__(self, applier: Applier, stop: threading.Event, settle_seconds: float = 20.0) -> None:
        self.applier = applier
        self.stop = stop
        self.settle_seconds = settle_seconds
        self.target = ""  # the last generation handled (applied, rolled back or failed): not retried
        self.report: wire.NetworkReport | None = None
        self.applied: wire.NetworkSetup | None = None  # the set-up in place, whose links each report shows

    def refresh(self) -> wire.NetworkReport | None:
        """The report with the links as they are now: links still coming up after the confirmation (or
        changed behind our back since) show in the next heartbeat, not never."""
        if self.report is not None and self.applied is not None and self.report.generation == self.applied.generation:
            try:
                links = self.applier.links.observe(wanted_links(self.applied))
            except (CommandFailed, ValueError) as exc:
                log.warning("observing links: %s", exc)
                return self.report
            if links != self.report.links:
                self.report = wire.NetworkReport(self.report.generation, self.report.state, self.report.message, links)
        return self.report

    def handle(self, setup: wire.NetworkSetup, confirm: Callable[[wire.NetworkReport], bool]) -> None:
        if setup.generation == self.target:
            return
        self.target = setup.generation
        checkpoint = self.applier.current()
        try:
            files = render(setup, self.applier.links.macs())
        except (SetupError, CommandFailed, ValueError) as exc:
            self.report = wire.NetworkReport(setup.generation, wire.NetworkApply.FAILED, str(exc)[:500])
            log.error("network set-up %s not applied: %s", setup.generation, exc)
            return
        if files == checkpoint:
            links = self.applier.links.observe(wanted_links(setup))
            self.report = wire.NetworkReport(setup.generation, wire.NetworkApply.APPLIED, "", links)
            self.applied = setup
            return
        log.info("applying network set-up %s (%s units; checkpoint of %s)", setup.generation, len(files),
                 len(checkpoint))  # fmt: skip
        try:
            self.applier.switch(checkpoint, files)
        except (CommandFailed, OSError) as exc:
            self._restore(files, checkpoint)
            self.report = wire.NetworkReport(setup.generation, wire.NetworkApply.FAILED, f"applying: {exc}"[:500])
            log.error("network set-up %s failed, previous set-up restored: %s", setup.generation, exc)
            return
        started = time.monotonic()
        deadline = started + setup.rollback_seconds
        settle_until = started + self.settle_seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            links = self.applier.links.observe(wanted_links(setup))
            if not settled(setup, links) and time.monotonic() < settle_until:
                self.stop.wait(0.5)
                continue
            report = wire.NetworkReport(setup.generation, wire.NetworkApply.APPLIED, "", links)
            if confirm(report):
                self.report, self.applied = report, setup
                log.info("network set-up %s applied and confirmed in %.1fs", setup.generation,
                         time.monotonic() - started)  # fmt: skip
                return
            self.stop.wait(2.0)
        waited = time.monotonic() - started
        self._restore(files, checkpoint)
        message = (f"no heartbeat reached the appliance for {waited:.0f}s after applying it: "
                   "the previous set-up is back")  # fmt: skip
        log.warning("network set-up %s rolled back: %s", setup.generation, message)
        self.report = wire.NetworkReport(setup.generation, wire.NetworkApply.ROLLED_BACK, message)

    def _restore(self, files: Mapping[str, str], checkpoint: Mapping[str, str]) -> None:
        try:
            self.applier.switch(files, checkpoint)
        except (CommandFailed, OSError) as exc:
            log.error("restoring the previous network set-up: %s", exc)
