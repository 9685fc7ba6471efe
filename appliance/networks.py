"""Logical networks as the API and CLI ask for them: create, attach to clusters, rules, per-host NIC assignment.

Every request is checked before anything is written (a VLAN out of range, a NIC the host does not have, two
untagged networks on one NIC, an address outside the subnet are refused with the reason and change nothing).
What a host must carry is worked out here (`desired`), sent to its node agent with every heartbeat answer,
and compared with what the node reports it reached (`sync`).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from appliance.db.base import utcnow
from appliance.db.models import (
    BondMode,
    BootProtocol,
    Cluster,
    Host,
    HostNetwork,
    Network,
    NetworkRole,
    NetworkRule,
    RuleMatch,
    VmNic,
)
from appliance.errors import Conflict, NotFound, UsageError
from nodeagent import wire

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
ROLLBACK_SECONDS = 60
_FIELDS = frozenset({"name", "description", "vlan", "mtu", "role", "bridge", "boot_protocol", "subnet", "gateway"})


def _int(body: dict[str, Any], key: str, low: int, high: int, what: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{key}: {value!r} is not {what}")
    return value


def _enum(cls: Any, body: dict[str, Any], key: str, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    try:
        return cls(str(value))
    except ValueError:
        raise UsageError(f"{key}: {value!r} is not one of {', '.join(m.value for m in cls)}") from None


def default_bridge(name: str) -> str:
    """br-<name>, cut to Linux's 15 bytes; a cut name gets a short hash so two long names stay apart."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "-", name)
    if len(clean) <= 12:
        return f"br-{clean}"
    return f"br-{clean[:7]}-{hashlib.sha256(name.encode()).hexdigest()[:4]}"


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    description: str = ""
    vlan: int | None = None
    mtu: int | None = None
    role: NetworkRole = NetworkRole.VM
    bridge: str = ""
    boot_protocol: BootProtocol = BootProtocol.NONE
    subnet: str | None = None
    gateway: str | None = None

    @classmethod
    def from_request(cls, body: dict[str, Any]) -> NetworkSpec:
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise UsageError(f"{unknown[0]}: unknown field", f"fields: {', '.join(sorted(_FIELDS))}")
        name = body.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise UsageError(f"network name {name!r} is not valid", "1-64 letters, digits, '_', '.', '-'")
        vlan = _int(body, "vlan", 1, 4094, "a VLAN id (1-4094; leave it out for untagged)")
        mtu = _int(body, "mtu", 68, 65535, "an MTU (68-65535)")
        role = _enum(NetworkRole, body, "role", NetworkRole.VM)
        default_proto = BootProtocol.STATIC if role.needs_host_address() else BootProtocol.NONE
        proto = _enum(BootProtocol, body, "boot_protocol", default_proto)
        bridge = body.get("bridge") or default_bridge(name)
        if not isinstance(bridge, str) or not IFNAME.match(bridge):
            raise UsageError(f"bridge: {bridge!r} is not an interface name", "1-15 letters, digits, '_', '.', '-'")
        subnet = body.get("subnet")
        if subnet is not None:
            try:
                subnet = str(ipaddress.ip_network(str(subnet), strict=True))
            except ValueError as exc:
                raise UsageError(f"subnet: {subnet!r} is not a network in CIDR form ({exc})") from None
        gateway = body.get("gateway")
        if gateway is not None:
            try:
                gw = ipaddress.ip_address(str(gateway))
            except ValueError:
                raise UsageError(f"gateway: {gateway!r} is not an IP address") from None
            if subnet is None or gw not in ipaddress.ip_network(subnet):
                raise UsageError(f"gateway: {gateway} is not inside the subnet {subnet}", "give --subnet too")
            gateway = str(gw)
        if proto is BootProtocol.STATIC and subnet is None:
            raise UsageError(
                f"a {role} network with static host addresses needs a subnet",
                "give --subnet, or --boot-protocol dhcp / none",
            )
        description = body.get("description") or ""
        if not isinstance(description, str):
            raise UsageError("description: must be a string")
        return cls(name, description, vlan, mtu, role, bridge, proto, subnet, gateway)


# -- networks ------------------------------------------------------------------------------------------


def find_network(session: Session, key: str | int) -> Network:
    found = session.get(Network, int(key)) if str(key).isdigit() else None
    if found is None:
        found = session.scalars(select(Network).where(Network.name == str(key))).one_or_none()
    if found is None:
        raise NotFound(f"no network {key!r}", "see `drover network list`")
    return found


def create_network(session: Session, spec: NetworkSpec) -> Network:
    if session.scalars(select(Network.id).where(Network.name == spec.name)).first() is not None:
        raise Conflict(f"network {spec.name} exists already")
    if session.scalars(select(Network.name).where(Network.bridge == spec.bridge)).first() is not None:
        raise Conflict(f"bridge {spec.bridge} is another network's", "give --bridge NAME")
    if spec.role is NetworkRole.MIGRATION:
        other = session.scalars(select(Network.name).where(Network.role == NetworkRole.MIGRATION)).first()
        if other is not None:
            raise Conflict(f"network {other} is the migration network already", "one migration network at most")
    net = Network(
        name=spec.name,
        description=spec.description,
        vlan=spec.vlan,
        mtu=spec.mtu,
        role=spec.role,
        bridge=spec.bridge,
        boot_protocol=spec.boot_protocol,
        subnet=spec.subnet,
        gateway=spec.gateway,
    )
    session.add(net)
    session.flush()
    return net


def delete_network(session: Session, net: Network) -> None:
    used = session.scalars(select(VmNic).where(VmNic.network_id == net.id)).all()
    if used:
        names = sorted({n.vm.name for n in used})
        raise Conflict(f"network {net.name} is in use by VMs: {', '.join(names[:5])}", "remove their NICs first")
    session.delete(net)
    session.flush()


def _cluster(session: Session, key: str) -> Cluster:
    found = session.get(Cluster, int(key)) if key.isdigit() else None
    if found is None:
        rows = session.scalars(select(Cluster).where(Cluster.name == key)).all()
        if len(rows) > 1:
            raise Conflict(f"more than one cluster is called {key}", "give its id")
        found = rows[0] if rows else None
    if found is None:
        raise NotFound(f"no cluster {key!r}")
    return found


def attach(session: Session, net: Network, cluster_key: str, detach: bool = False) -> Cluster:
    cluster = _cluster(session, cluster_key)
    if detach:
        if cluster not in net.clusters:
            raise Conflict(f"network {net.name} is not attached to cluster {cluster.name}")
        net.clusters.remove(cluster)
    elif cluster not in net.clusters:
        net.clusters.append(cluster)
    session.flush()
    return cluster


def add_rule(session: Session, net: Network, match: str, value: str) -> NetworkRule:
    try:
        kind = RuleMatch(match)
    except ValueError:
        raise UsageError(f"rule: {match!r} is not name or mac") from None
    if kind is RuleMatch.MAC:
        try:
            value = wire.normalize_mac(value)
        except wire.WireError as exc:
            raise UsageError(f"rule: {exc}") from None
    elif not IFNAME.match(value):
        raise UsageError(f"rule: {value!r} is not an interface name")
    if any(r.match is kind and r.value == value for r in net.rules):
        raise Conflict(f"network {net.name} has that rule already")
    rule = NetworkRule(match=kind, value=value)
    net.rules.append(rule)
    session.flush()
    return rule


def in_scope(net: Network, host: Host) -> bool:
    """A network attached to no cluster is everyone's; otherwise only its clusters' hosts carry it."""
    return not net.clusters or host.cluster_id in {c.id for c in net.clusters}


def summary(net: Network) -> dict[str, Any]:
    return {
        "id": net.id,
        "name": net.name,
        "description": net.description,
        "vlan": net.vlan,
        "mtu": net.mtu,
        "role": str(net.role),
        "bridge": net.bridge,
        "boot_protocol": str(net.boot_protocol),
        "subnet": net.subnet,
        "gateway": net.gateway,
        "clusters": sorted(c.name for c in net.clusters),
        "rules": [{"match": str(r.match), "value": r.value} for r in net.rules],
    }


def detail(net: Network) -> dict[str, Any]:
    return {
        **summary(net),
        "hosts": [
            {
                "host": a.host.hostname,
                "nics": a.nics,
                "bond_mode": a.bond_mode and str(a.bond_mode),
                "address": a.address,
            }
            for a in sorted(net.assignments, key=lambda a: a.host.hostname)
        ],
    }


# -- per-host assignment -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Carried:
    """One network as a host carries it: the NICs (sorted), bond mode, static address, and whence."""

    network: Network
    nics: tuple[str, ...]
    bond_mode: BondMode | None
    address: str | None
    source: str  # "admin" or "rule"


def _check_address(net: Network, address: str | None, host: Host) -> str | None:
    if net.boot_protocol is not BootProtocol.STATIC:
        if address:
            raise UsageError(f"address: network {net.name} gives hosts addresses by {net.boot_protocol}, not static")
        return None
    if not address:
        raise UsageError(f"address: network {net.name} ({net.role}) needs a static address for the host")
    try:
        iface = ipaddress.ip_interface(address if "/" in address else f"{address}/{_prefix(net)}")
    except ValueError:
        raise UsageError(f"address: {address!r} is not an IP address") from None
    subnet = ipaddress.ip_network(net.subnet or "0.0.0.0/0")
    if iface.ip not in subnet or iface.network != subnet:
        raise UsageError(f"address: {address} is not in network {net.name}'s subnet {net.subnet}")
    if iface.ip in (subnet.network_address, subnet.broadcast_address):
        raise UsageError(f"address: {iface.ip} is the subnet's network or broadcast address")
    if net.gateway and str(iface.ip) == net.gateway:
        raise UsageError(f"address: {iface.ip} is the network's gateway")
    taken = [a for a in net.assignments
             if a.address and a.host_id != host.id and ipaddress.ip_interface(a.address).ip == iface.ip]  # fmt: skip
    if taken:
        raise Conflict(f"address: {iface.ip} is {taken[0].host.hostname}'s on network {net.name}")
    return str(iface)


def _prefix(net: Network) -> int:
    return ipaddress.ip_network(net.subnet or "0.0.0.0/32").prefixlen


def _conflicts(carried: list[Carried], new: Carried) -> str | None:
    """Why `new` cannot sit beside the others on the host, or None."""
    for c in carried:
        if c.network.id == new.network.id:
            continue
        shared = set(c.nics) & set(new.nics)
        if not shared:
            continue
        if set(c.nics) != set(new.nics):
            return (f"NIC {sorted(shared)[0]} carries network {c.network.name} as part of "
                    f"{'+'.join(c.nics)}; a NIC is in one bond or none")  # fmt: skip
        if c.bond_mode != new.bond_mode and len(new.nics) > 1:
            return f"the bond {'+'.join(new.nics)} is in mode {c.bond_mode} for network {c.network.name}"
        if c.network.vlan is None and new.network.vlan is None:
            return f"{'+'.join(new.nics)} carries network {c.network.name} untagged already: one untagged network each"
        if c.network.vlan is not None and c.network.vlan == new.network.vlan:
            return f"{'+'.join(new.nics)} carries network {c.network.name} on VLAN {c.network.vlan} already"
    return None


def carried(session: Session, host: Host, ruled: Sequence[Network] | None = None) -> list[Carried]:
    """What the host carries: the admin's assignments, then rules for in-scope networks without one.

    A rule that would clash with what is already there (a second untagged network on a NIC) is skipped;
    `drover host network HOST` shows it as such.
    """
    out = [
        Carried(a.network, tuple(a.nics), a.bond_mode, a.address, "admin")
        for a in sorted(host.networks, key=lambda a: a.network.name)
    ]
    nets = ruled if ruled is not None else _ruled(session)
    if not nets:
        return out  # the host's NICs are only read for rules: a load fewer in every heartbeat without them
    assigned = {a.network_id for a in host.networks}
    names = {n.name for n in host.nics}
    by_mac = {n.mac: n.name for n in host.nics}
    for net in nets:
        if net.id in assigned or not in_scope(net, host) or net.boot_protocol is BootProtocol.STATIC:
            continue  # a static address is per host: a rule cannot give one
        for rule in net.rules:
            nic = rule.value if rule.match is RuleMatch.NAME and rule.value in names else by_mac.get(rule.value)
            if nic is None:
                continue
            c = Carried(net, (nic,), None, None, "rule")
            if _conflicts(out, c) is None:
                out.append(c)
            break
    return out


def assign(
    session: Session,
    host: Host,
    net: Network,
    nics: list[str],
    bond_mode: str | None = None,
    address: str | None = None,
) -> HostNetwork:
    """Record that `nics` of `host` carry `net` (replacing an earlier assignment of it), or refuse."""
    if not in_scope(net, host):
        clusters = ", ".join(sorted(c.name for c in net.clusters))
        raise Conflict(f"network {net.name} is attached to cluster(s) {clusters}, not to {host.hostname}'s")
    if not nics or not all(isinstance(n, str) for n in nics):
        raise UsageError("nics: give one NIC, or two or more for a bond")
    by_mac = {n.mac: n.name for n in host.nics}
    known = {n.name for n in host.nics}
    names: list[str] = []
    for nic in nics:
        name = by_mac.get(nic.lower(), nic)
        if name not in known:
            listed = ", ".join(sorted(known)) or "none recorded"
            raise UsageError(f"nics: {host.hostname} has no NIC {nic!r}", f"its NICs: {listed}")
        names.append(name)
    if len(set(names)) != len(names):
        raise UsageError("nics: a NIC is named twice")
    mode = None
    if len(names) > 1:
        try:
            mode = BondMode(bond_mode or BondMode.ACTIVE_BACKUP)
        except ValueError:
            raise UsageError(f"bond_mode: {bond_mode!r} is not one of {', '.join(m.value for m in BondMode)}") from None
    elif bond_mode:
        raise UsageError("bond_mode: a bond needs two NICs or more")
    current = next((a for a in host.networks if a.network_id == net.id), None)
    checked = _check_address(net, address, host)
    new = Carried(net, tuple(sorted(names)), mode, checked, "admin")
    others = [c for c in carried(session, host) if c.source == "admin"]
    why = _conflicts(others, new)
    if why is not None:
        raise Conflict(f"network {net.name} on {host.hostname}: {why}")
    if current is None:
        current = HostNetwork(network=net)
        host.networks.append(current)
    current.nics, current.bond_mode, current.address = list(new.nics), mode, checked
    session.flush()
    return current


def unassign(session: Session, host: Host, net: Network) -> None:
    current = next((a for a in host.networks if a.network_id == net.id), None)
    if current is None:
        raise NotFound(f"{host.hostname} has no assignment of network {net.name}")
    host.networks.remove(current)
    session.flush()


@functools.cache
def _ruled_query() -> Select[tuple[Network]]:
    # Built once: every heartbeat asks, and building the statement (its cache key) cost as much as running it.
    return select(Network).where(Network.rules.any()).order_by(Network.name)


def _ruled(session: Session) -> Sequence[Network]:
    return session.scalars(_ruled_query()).all()


def carried_ids(session: Session, hosts: Sequence[Host]) -> dict[int, frozenset[int]]:
    """Host id -> the networks it carries, for placement over many hosts: two queries, not two per host."""
    assigned: dict[int, set[int]] = {}
    for host_id, net_id in session.execute(select(HostNetwork.host_id, HostNetwork.network_id)).tuples():
        assigned.setdefault(host_id, set()).add(net_id)
    ruled = _ruled(session)
    if not ruled:
        return {h.id: frozenset(assigned.get(h.id, ())) for h in hosts}
    return {h.id: frozenset(c.network.id for c in carried(session, h, ruled)) for h in hosts}


def migration_uri(session: Session, dest: Host) -> str | None:
    """tcp://<dest's address on the migration network> for the memory stream, or None (no such network, or
    the host has no address there yet): then migration goes where libvirt's connection goes."""
    net = session.scalars(select(Network).where(Network.role == NetworkRole.MIGRATION)).first()
    if net is None:
        return None
    mine = next((c for c in carried(session, dest) if c.network.id == net.id), None)
    if mine is None:
        return None
    address = mine.address
    if address is None:  # DHCP: what the node reported on the bridge
        link = (dest.network_observed or {}).get("links", {}).get(net.bridge or "", {})
        address = next(iter(link.get("addresses", [])), None)
    if not address:
        return None
    ip = ipaddress.ip_interface(address).ip
    return f"tcp://[{ip}]" if ip.version == 6 else f"tcp://{ip}"


# -- what the node is asked for, and what it reached ----------------------------------------------------


def bond_name(nics: tuple[str, ...]) -> str:
    """The same NICs make the same bond name on every boot: 'bond' + a short hash of their names."""
    return "bond" + hashlib.sha256(",".join(sorted(nics)).encode()).hexdigest()[:8]


def desired(session: Session, host: Host, rollback_seconds: int = ROLLBACK_SECONDS) -> wire.NetworkSetup:
    ports = []
    for c in carried(session, host):
        net = c.network
        bond = bond_name(c.nics) if len(c.nics) > 1 else ""
        ports.append(
            wire.NetworkPort(
                name=net.name,
                bridge=net.bridge or default_bridge(net.name),
                nics=c.nics,
                vlan=net.vlan or 0,
                mtu=net.mtu or 0,
                bond=bond,
                bond_mode=str(c.bond_mode or BondMode.ACTIVE_BACKUP) if bond else "",
                boot_protocol=str(net.boot_protocol),
                address=c.address or "",
                gateway=net.gateway or "",
                role=str(net.role),
            )
        )
    content = json.dumps([wire.to_dict(p) for p in ports], sort_keys=True)
    generation = hashlib.sha256(content.encode()).hexdigest()[:16]
    return wire.NetworkSetup(generation, tuple(ports), rollback_seconds)


def record_report(host: Host, report: wire.NetworkReport) -> bool:
    """Keep what the node says it reached; True when that changed (worth an event)."""
    links = {link.name: wire.to_dict(link) for link in report.links}
    changed = (host.network_generation, host.network_state, host.network_message) != (
        report.generation,
        str(report.state),
        report.message,
    )
    host.network_generation, host.network_state = report.generation, str(report.state)
    host.network_message, host.network_observed = report.message, {"links": links}
    host.network_reported_at = utcnow()
    return changed


def differences(setup: wire.NetworkSetup, host: Host) -> list[str]:
    """What the node's last report lacks of `setup`; empty when the node is in sync."""
    if host.network_state is None:
        return [] if not setup.networks else ["the node has not reported its network set-up yet"]
    out: list[str] = []
    if host.network_generation != setup.generation:
        out.append(f"the node reached set-up {host.network_generation}, the appliance wants {setup.generation}")
    if host.network_state != wire.NetworkApply.APPLIED:
        out.append(f"{host.network_state}: {host.network_message}")
    links: dict[str, dict[str, Any]] = (host.network_observed or {}).get("links", {})
    for port in setup.networks:
        bridge = links.get(port.bridge)
        if bridge is None or bridge.get("kind") != "bridge":
            out.append(f"{port.name}: no bridge {port.bridge}")
            continue
        if port.mtu and bridge.get("mtu") != port.mtu:
            out.append(f"{port.name}: bridge MTU {bridge.get('mtu')}, wanted {port.mtu}")
        if port.address and port.address not in bridge.get("addresses", []):
            out.append(f"{port.name}: {port.bridge} lacks {port.address}")
        carrier = port.bond or port.nics[0]
        if port.bond:
            bond = links.get(port.bond)
            if bond is None or bond.get("kind") != "bond":
                out.append(f"{port.name}: no bond {port.bond}")
            for nic in port.nics:
                if (links.get(nic) or {}).get("master") != port.bond:
                    out.append(f"{port.name}: {nic} is not in bond {port.bond}")
        if port.vlan:
            vlans = [n for n, link in links.items() if link.get("kind") == "vlan" and link.get("vlan") == port.vlan
                     and link.get("master") == port.bridge]  # fmt: skip
            if not vlans:
                out.append(f"{port.name}: no VLAN {port.vlan} on {carrier} in bridge {port.bridge}")
        elif (links.get(carrier) or {}).get("master") != port.bridge:
            out.append(f"{port.name}: {carrier} is not in bridge {port.bridge}")
    return out


def sync(session: Session, host: Host) -> dict[str, Any]:
    """The host's network status as the API shows it: in sync or what differs, with what it carries."""
    setup = desired(session, host)
    diff = differences(setup, host)
    return {
        "in_sync": not diff,
        "differences": diff,
        "generation": setup.generation,
        "reported_generation": host.network_generation,
        "state": host.network_state,
        "message": host.network_message,
        "reported_at": host.network_reported_at.isoformat() if host.network_reported_at else None,
        "networks": [
            {
                "network": c.network.name,
                "role": str(c.network.role),
                "vlan": c.network.vlan,
                "bridge": c.network.bridge,
                "nics": list(c.nics),
                "bond_mode": c.bond_mode and str(c.bond_mode),
                "address": c.address,
                "source": c.source,
            }
            for c in carried(session, host)
        ],
    }
