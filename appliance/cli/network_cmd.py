"""`drover network create|list|show|delete|attach|rule` and `drover host network HOST [--set NET --nic ...]`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config
from appliance.cli.storage_cmd import seg, table
from appliance.errors import UsageError

ROLES = ("vm", "migration", "management", "storage")
BOND_MODES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb")


def register(sub: Any) -> None:
    p = sub.add_parser("network", help="logical networks: VLAN, MTU, role; attached to clusters; NIC rules")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="define a logical network")
    create.add_argument("name")
    create.add_argument("--vlan", type=int, help="802.1Q VLAN id 1-4094 (default: untagged)")
    create.add_argument("--mtu", type=int, help="MTU of the bridge and the links under it")
    create.add_argument("--role", choices=ROLES, default="vm", help="what it carries (default vm)")
    create.add_argument("--bridge", help="the bridge's name on every host (default br-NAME)")
    create.add_argument(
        "--boot-protocol",
        choices=("dhcp", "static", "none"),
        help="how hosts get their address on it (default: static for non-vm roles, else none)",
    )
    create.add_argument("--subnet", help="CIDR, for static host addresses")
    create.add_argument("--gateway", help="gateway inside the subnet")
    create.add_argument("--description")
    create.set_defaults(func=create_network)
    ls = verbs.add_parser("list", help="every logical network")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_networks)
    show = verbs.add_parser("show", help="one network, its clusters, rules and the hosts carrying it")
    show.add_argument("network", help="name or id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_network)
    delete = verbs.add_parser("delete", help="forget a network no VM uses (hosts drop it at their next heartbeat)")
    delete.add_argument("network", help="name or id")
    delete.set_defaults(func=delete_network)
    attach = verbs.add_parser("attach", help="attach a network to a cluster (no cluster at all: every host)")
    attach.add_argument("network", help="name or id")
    attach.add_argument("--cluster", required=True, help="cluster name or id")
    attach.add_argument("--detach", action="store_true", help="detach instead")
    attach.set_defaults(func=attach_network)
    rule = verbs.add_parser("rule", help="carry the network on the NIC with this name on every host, or this MAC")
    rule.add_argument("network", help="name or id")
    which = rule.add_mutually_exclusive_group(required=True)
    which.add_argument("--nic-name", help="the NIC's kernel name, e.g. eno2")
    which.add_argument("--nic-mac", help="the NIC's MAC address")
    rule.add_argument("--remove", action="store_true", help="remove the rule instead")
    rule.set_defaults(func=network_rule)


def register_host_verb(verbs: Any) -> None:
    """`drover host network HOST ...`: added to the host noun's verbs (appliance/cli/host_cmd.py)."""
    p = verbs.add_parser("network", help="which NICs carry which networks on a host; in sync or what differs")
    p.add_argument("host", help="id, UUID or host name")
    p.add_argument("--set", metavar="NETWORK", help="assign NETWORK to --nic (two or more --nic: a bond)")
    p.add_argument("--nic", action="append", default=[], help="NIC name or MAC (repeatable)")
    p.add_argument("--bond-mode", choices=BOND_MODES, help="with two or more --nic (default active-backup)")
    p.add_argument("--address", help="the host's static address on NETWORK (CIDR or plain)")
    p.add_argument("--remove", metavar="NETWORK", help="remove the host's assignment of NETWORK")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=host_network)


def create_network(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    for key in ("vlan", "mtu", "bridge", "boot_protocol", "subnet", "gateway", "description"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    with client_for(load_config(args)) as api:
        n = api.post("/api/v1/networks", body)
    print(f"network {n['name']} (id {n['id']}) created: bridge {n['bridge']}, {_tag(n)}, role {n['role']}")
    return 0


def _tag(n: dict[str, Any]) -> str:
    return f"VLAN {n['vlan']}" if n["vlan"] else "untagged"


def list_networks(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        rows = api.get("/api/v1/networks")["networks"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = [("ID", "NAME", "ROLE", "VLAN", "MTU", "BRIDGE", "HOST ADDRESSES", "CLUSTERS", "RULES")]
    for n in rows:
        rules = ",".join(f"{r['match']}={r['value']}" for r in n["rules"]) or "-"
        addressing = n["boot_protocol"] + (f" {n['subnet']}" if n["subnet"] else "")
        out.append((str(n["id"]), n["name"], n["role"], str(n["vlan"] or "-"), str(n["mtu"] or "-"), n["bridge"],
                    addressing, ",".join(n["clusters"]) or "(all)", rules))  # fmt: skip
    table(out)
    return 0


def show_network(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        n = api.get(f"/api/v1/networks/{seg(args.network)}")
    if args.json:
        print(json.dumps(n, indent=2))
        return 0
    for key in ("id", "name", "role", "vlan", "mtu", "bridge", "boot_protocol", "subnet", "gateway", "description"):
        print(f"{key + ':':<16}{n[key] if n[key] not in (None, '') else '-'}")
    print(f"{'clusters:':<16}{', '.join(n['clusters']) or '(all hosts)'}")
    for r in n["rules"]:
        print(f"{'rule:':<16}NIC {r['match']} {r['value']} on every host")
    for h in n["hosts"]:
        bond = f" bond {h['bond_mode']}" if h["bond_mode"] else ""
        print(f"{'host:':<16}{h['host']} on {'+'.join(h['nics'])}{bond} {h['address'] or ''}".rstrip())
    return 0


def delete_network(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        api.request("DELETE", f"/api/v1/networks/{seg(args.network)}")
    print(f"network {args.network} deleted")
    return 0


def attach_network(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        n = api.post(f"/api/v1/networks/{seg(args.network)}/attach", {"cluster": args.cluster, "detach": args.detach})
    print(f"network {n['name']} attached to: {', '.join(n['clusters']) or '(no cluster: every host)'}")
    return 0


def network_rule(args: argparse.Namespace) -> int:
    match, value = ("name", args.nic_name) if args.nic_name else ("mac", args.nic_mac)
    path = f"/api/v1/networks/{seg(args.network)}/rules"
    with client_for(load_config(args)) as api:
        if args.remove:
            n = api.request("DELETE", f"{path}/{match}/{seg(value)}")
        else:
            n = api.post(path, {"match": match, "value": value})
    rules = ", ".join(f"{r['match']} {r['value']}" for r in n["rules"]) or "none"
    print(f"network {n['name']} rules: {rules}")
    return 0


def host_network(args: argparse.Namespace) -> int:
    base = f"/api/v1/hosts/{seg(args.host)}/networks"
    if args.set and args.remove:
        raise UsageError("give --set or --remove, not both")
    if (args.nic or args.bond_mode or args.address) and not args.set:
        raise UsageError("--nic, --bond-mode and --address go with --set NETWORK")
    with client_for(load_config(args)) as api:
        if args.set:
            if not args.nic:
                raise UsageError("--set needs --nic (one, or two or more for a bond)")
            body: dict[str, Any] = {"nics": args.nic}
            if args.bond_mode:
                body["bond_mode"] = args.bond_mode
            if args.address:
                body["address"] = args.address
            out = api.request("PUT", f"{base}/{seg(args.set)}", body=body)
        elif args.remove:
            out = api.request("DELETE", f"{base}/{seg(args.remove)}")
        else:
            out = api.get(base)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    rows = [("NETWORK", "ROLE", "VLAN", "BRIDGE", "NICS", "BOND", "ADDRESS", "FROM")]
    for n in out["networks"]:
        rows.append((n["network"], n["role"], str(n["vlan"] or "-"), n["bridge"], "+".join(n["nics"]),
                     n["bond_mode"] or "-", n["address"] or "-", n["source"]))  # fmt: skip
    if len(rows) > 1:
        table(rows)
    else:
        print(f"{out['host']} carries no logical network")
    if out["in_sync"]:
        print(f"in sync (set-up {out['generation']}, {out['state'] or 'nothing to apply'})")
    else:
        print(f"not in sync (wanted set-up {out['generation']}):")
        for d in out["differences"]:
            print(f"  - {d}")
    return 0
