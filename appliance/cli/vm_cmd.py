"""`drover vm create|list|show|start|shutdown|poweroff|suspend|resume|save|restore|migrate|delete|console` through
the API.

An action prints the task it queued; `--wait` follows it to its end (as `drover task wait` does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from appliance.cli import console_cmd
from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config, paging
from appliance.cli.power_cmd import add_vm_verbs as add_ha_verbs
from appliance.cli.snapshot_cmd import register_vm_verbs
from appliance.cli.task_cmd import follow, table
from appliance.errors import UsageError

_VM_HELP = "id, UUID or name"
_ACTIONS = {
    "start": "start a stopped VM (placement picks a host if it has none)",
    "shutdown": "ask the guest to power off (ACPI)",
    "poweroff": "pull the plug",
    "suspend": "pause it in memory",
    "resume": "run a suspended VM again",
    "save": "write its memory to its host's disk and stop it",
    "restore": "start a saved VM from its saved memory",
    "update-state": "re-read its state from libvirt",
    "migrate": "move a running VM to another host, live",
    "delete": "undefine it on its host and forget it (its volumes stay)",
}


def register(sub: Any) -> None:
    p = sub.add_parser("vm", help="virtual machines: create, list, show and drive them through the task queue")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="add a VM and queue its create task (defines it on a host)")
    create.add_argument("name")
    create.add_argument("--template", help="boot from a copy-on-write overlay (vda) of this template's base image; "
                        "its vCPUs and memory are the defaults")  # fmt: skip
    create.add_argument("--vcpus", type=int, help="default: the template's, else 1")
    create.add_argument("--memory", type=int, metavar="MIB", help="memory in MiB (default: the template's, else 512)")
    create.add_argument("--pool", help="hardware pool id or name (default: the default pool)")
    create.add_argument("--host", help="put it on this host (manual placement); default: placement decides")
    create.add_argument("--pinned", action="store_true", help="never move it (needs --host)")
    create.add_argument("--uefi", action="store_true", help="UEFI firmware instead of BIOS")
    create.add_argument("--disk", type=int, action="append", default=[], metavar="VOLUME_ID", help="attach a volume")
    create.add_argument("--network", action="append", default=[], metavar="NETWORK[,mac=MAC][,model=M]",
                        help="a NIC on this network (repeatable); its MAC fixed, e.g. for a cloud-init network config "
                        "matching it")  # fmt: skip
    create.add_argument("--user-data", metavar="FILE", help="cloud-init user data for the first boot (NoCloud seed)")
    create.add_argument("--ssh-key", action="append", default=[], metavar="KEY_OR_FILE",
                        help="an OpenSSH public key (or a .pub file) for cloud-init (repeatable)")  # fmt: skip
    create.add_argument("--network-config", metavar="FILE",
                        help="cloud-init network config (YAML, version 1 or 2), e.g. static addresses")  # fmt: skip
    create.add_argument("--kernel", help="direct kernel boot: kernel path on the host")
    create.add_argument("--initrd", help="direct kernel boot: initrd path on the host")
    create.add_argument("--cmdline", help="direct kernel boot: kernel command line")
    create.add_argument("--ha", action="store_true", help="highly available: restarted elsewhere if its host is fenced")
    create.add_argument("--ha-priority", type=int, default=0, metavar="N", help="0-1000, higher restarts first")
    create.add_argument("--wait", action="store_true", help="follow the create task to its end")
    create.set_defaults(func=create_vm)
    ls = verbs.add_parser("list", help="every VM you may see, with its state and host")
    ls.add_argument("--json", action="store_true")
    paging(ls)
    ls.set_defaults(func=list_vms)
    show = verbs.add_parser("show", help="one VM: state, host, disks, NICs, tasks not yet ended")
    show.add_argument("vm", help=_VM_HELP)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_vm)
    for verb, text in _ACTIONS.items():
        v = verbs.add_parser(verb, help=text)
        v.add_argument("vm", help=_VM_HELP)
        if verb == "migrate":
            v.add_argument("--host", help="destination (default: placement decides)")
            v.add_argument("--bandwidth", type=int, metavar="MIB_S", help="limit the transfer to this many MiB/s")
        if verb == "shutdown":
            v.add_argument("--timeout", type=int, metavar="SECONDS", help="fail if still running after this long")
        v.add_argument("--wait", action="store_true", help="follow the task to its end")
        v.set_defaults(func=vm_action, action=verb)
    register_vm_verbs(verbs)  # snapshot create|list|revert|delete, clone
    console_cmd.register(verbs)
    add_ha_verbs(verbs)  # ha --on|--off [--priority N]


def _path(vm: str, verb: str = "") -> str:
    return f"/api/v1/vms/{quote(vm, safe='')}" + (f"/{verb}" if verb else "")


def create_vm(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.vcpus is not None:
        body["vcpus"] = args.vcpus
    if args.memory is not None:
        body["memory_mib"] = args.memory
    if args.template:
        body["template"] = int(args.template) if args.template.isdigit() else args.template
    if args.pool:
        body["pool"] = int(args.pool) if args.pool.isdigit() else args.pool
    if args.host:
        body["host"] = args.host
    if args.pinned:
        body["placement_policy"] = "pinned"
    if args.uefi:
        body["firmware"] = "uefi"
    if args.disk:
        body["disks"] = [{"volume": v} for v in args.disk]
    if args.network:
        body["nics"] = [_nic(n) for n in args.network]
    if args.ha:
        body["ha"], body["ha_priority"] = True, args.ha_priority
    if args.user_data or args.ssh_key or args.network_config:
        body["cloud_init"] = _cloud_init(args.user_data, args.ssh_key, args.network_config)
    for key in ("kernel", "initrd", "cmdline"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    with client_for(load_config(args)) as api:
        out = api.post("/api/v1/vms", body)
        vm, task = out["vm"], out["task"]
        print(f"VM {vm['name']} (id {vm['id']}, {vm['uuid']}) added; task {task['id']} {task['type']} queued")
        if args.wait:
            return follow(api, task["id"])
    return 0


def list_vms(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        rows = api.pages("/api/v1/vms", "vms", limit=args.limit, offset=args.offset)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = [("ID", "NAME", "STATE", "HOST", "VCPUS", "MEMORY", "POOL")]
    for v in rows:
        out.append((str(v["id"]), v["name"], v["state"], v["host"] or "-", str(v["vcpus"]),
                    f"{v['memory_mib']} MiB", v["pool"]))  # fmt: skip
    table(out)
    return 0


def _nic(spec: str) -> dict[str, Any]:
    """`lan`, `lan,mac=52:54:00:12:34:56`, `3,model=e1000` as one entry of the request's nics."""
    name, *options = spec.split(",")
    nic: dict[str, Any] = {"network": int(name) if name.isdigit() else name}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key not in ("mac", "model") or key in nic:
            raise UsageError(f"--network {spec}: options are mac=MAC and model=MODEL, each at most once")
        nic[key] = value
    return nic


def _cloud_init(user_data: str | None, keys: list[str], network_config: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        if user_data:
            out["user_data"] = Path(user_data).read_text()
        if network_config:
            out["network_config"] = Path(network_config).read_text()
        out["ssh_keys"] = [Path(k).read_text().strip() if Path(k).is_file() else k for k in keys]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cloud-init: cannot read {exc}") from None
    return out


def show_vm(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        v = api.get(_path(args.vm))
    if args.json:
        print(json.dumps(v, indent=2))
        return 0
    for key in ("id", "name", "uuid", "state", "state_reason", "host", "vcpus", "memory_mib", "pool",
                "placement_policy", "firmware", "owner", "template", "kernel", "cmdline"):  # fmt: skip
        print(f"{key + ':':<18}{v[key] if v[key] not in (None, '') else '-'}")
    for d in v["disks"]:
        ro = ", read-only" if d["read_only"] else ""
        print(f"disk:             {d['target']} {d['volume']} ({d['bus']}{ro}) {d['path'] or ''}".rstrip())
    for n in v["nics"]:
        print(f"nic:              {n['mac']} {n['network'] or '(user networking)'} {n['model']}")
    if v.get("addresses"):
        print(f"addresses:        {' '.join(v['addresses'])} (from the {v['addresses_source']})")
    for t in v["tasks"]:
        print(f"task:             {t['id']} {t['type']} {t['state']} {t['message']}".rstrip())
    return 0


def vm_action(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if getattr(args, "host", None):
        body["host"] = args.host
    if getattr(args, "bandwidth", None) is not None:
        body["bandwidth_mib"] = args.bandwidth
    if getattr(args, "timeout", None) is not None:
        body["timeout"] = args.timeout
    with client_for(load_config(args)) as api:
        task = api.post(_path(args.vm, args.action), body or None)
        print(f"task {task['id']} {task['type']} queued for VM {args.vm}")
        if args.wait:
            return follow(api, task["id"])
    return 0
