"""`drover storage pool create|list|show|refresh|delete` and `drover storage volume create|list|refresh|delete`."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config
from appliance.cli.task_cmd import follow
from appliance.client import Client
from appliance.errors import UsageError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'10G', '512M', '1T', '4096': bytes (binary units, as qemu-img and virsh read them)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise UsageError(f"size {text!r} is not understood", "e.g. 10G, 512M or a number of bytes")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        size = {"TiB": 1 << 40, "GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10}[unit]
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def seg(value: str) -> str:
    return quote(value, safe="")


def queued(api: Client, task: dict[str, Any], what: str, wait: bool) -> int:
    """Say which task was queued; with --wait follow it to its end (its exit code, as `drover task wait`)."""
    print(f"{what}: task {task['id']} ({task['type']}) queued" + ("" if wait else f"; `drover task wait {task['id']}`"))
    return follow(api, task["id"]) if wait else 0


def waits(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--wait", action="store_true", help="follow the task to its end")
    return parser


def register(sub: Any) -> None:
    p = sub.add_parser("storage", help="storage pools (dir, NFS, iSCSI, LVM) and their volumes")
    nouns = p.add_subparsers(dest="what", metavar="NOUN", required=True)

    pool = nouns.add_parser("pool", help="storage pools: defined on every available host of their hardware pool")
    verbs = pool.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="record a pool and queue defining it on the hosts")
    create.add_argument("name")
    create.add_argument("--type", required=True, choices=["dir", "nfs", "iscsi", "logical"])
    create.add_argument("--path", help="dir: the directory; nfs: where hosts mount it (default under /var/lib)")
    create.add_argument("--server", help="nfs: the NFS server; iscsi: the portal's host")
    create.add_argument("--export", help="nfs: the exported path")
    create.add_argument("--target", help="iscsi: the target's IQN")
    create.add_argument("--port", type=int, help="nfs or iscsi: the server's port (NFS 2049, iSCSI 3260)")
    create.add_argument("--initiator", dest="initiator_iqn", help="iscsi: the initiator IQN the hosts log in as")
    create.add_argument("--vg", dest="vg_name", help="logical: the LVM volume group")
    create.add_argument("--hardware-pool", help="name or id (default: the default pool)")
    waits(create)
    create.set_defaults(func=create_pool)
    ls = verbs.add_parser("list", help="every storage pool you may see")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_pools)
    show = verbs.add_parser("show", help="one pool with its volumes")
    show.add_argument("pool", help="name or id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_pool)
    refresh = verbs.add_parser("refresh", help="re-scan the pool on its hosts (new nodes get it defined)")
    refresh.add_argument("pool", help="name or id")
    waits(refresh)
    refresh.set_defaults(func=refresh_pool)
    delete = verbs.add_parser("delete", help="remove the pool from its hosts and forget it (data stays)")
    delete.add_argument("pool", help="name or id")
    waits(delete)
    delete.set_defaults(func=delete_pool)

    vol = nouns.add_parser("volume", help="volumes in a storage pool")
    verbs = vol.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="queue creating a volume")
    create.add_argument("pool", help="storage pool name or id")
    create.add_argument("name")
    create.add_argument("--size", required=True, help="e.g. 10G, 512M")
    create.add_argument("--format", choices=["raw", "qcow2"], default="qcow2")
    waits(create)
    create.set_defaults(func=create_volume)
    ls = verbs.add_parser("list", help="the pool's volumes")
    ls.add_argument("pool", help="storage pool name or id")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_volumes)
    refresh = verbs.add_parser("refresh", help="re-read one volume from libvirt (size, allocation, path)")
    refresh.add_argument("pool", help="storage pool name or id")
    refresh.add_argument("volume", help="name or id")
    waits(refresh)
    refresh.set_defaults(func=refresh_volume)
    delete = verbs.add_parser("delete", help="queue deleting a volume and its data")
    delete.add_argument("pool", help="storage pool name or id")
    delete.add_argument("volume", help="name or id")
    waits(delete)
    delete.set_defaults(func=delete_volume)


_POOL_FIELDS = ("path", "server", "export", "target", "port", "initiator_iqn", "vg_name", "hardware_pool")


def create_pool(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "type": args.type}
    body.update({k: getattr(args, k) for k in _POOL_FIELDS if getattr(args, k) is not None})
    with client_for(load_config(args)) as api:
        out = api.post("/api/v1/storage/pools", body)
        return queued(
            api, out["task"], f"storage pool {out['pool']['name']} (id {out['pool']['id']}) recorded", args.wait
        )


def _where(p: dict[str, Any]) -> str:
    if p["type"] == "nfs":
        return f"{p['server']}:{p['export']}" + (f" port {p['port']}" if p["port"] else "")
    if p["type"] == "iscsi":
        return f"{p['server']}:{p['port'] or 3260} {p['target']}"
    if p["type"] == "logical":
        return f"vg {p['vg_name']}"
    return str(p["path"])


def list_pools(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        rows = api.get("/api/v1/storage/pools")["pools"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = [("ID", "NAME", "TYPE", "STATE", "CAPACITY", "FREE", "VOLUMES", "WHERE")]
    for p in rows:
        out.append((str(p["id"]), p["name"], p["type"], p["state"], human(p["capacity_bytes"]),
                    human(p["available_bytes"]), str(p["volumes"]), _where(p)))  # fmt: skip
    table(out)
    return 0


def show_pool(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        p = api.get(f"/api/v1/storage/pools/{seg(args.pool)}")
    if args.json:
        print(json.dumps(p, indent=2))
        return 0
    for key in ("id", "name", "type", "state", "hardware_pool_id", "refreshed_at"):
        print(f"{key + ':':<18}{p[key] if p[key] is not None else '-'}")
    print(f"{'where:':<18}{_where(p)}")
    print(f"{'capacity:':<18}{human(p['capacity_bytes'])} ({human(p['available_bytes'])} free)")
    for v in p["volumes"]:
        print(f"{'volume:':<18}{v['name']} {v['format']} {human(v['capacity_bytes'])} {v['state']} {v['path'] or ''}")
    return 0


def refresh_pool(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        task = api.post(f"/api/v1/storage/pools/{seg(args.pool)}/refresh")
        return queued(api, task, f"refresh of storage pool {args.pool}", args.wait)


def delete_pool(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        task = api.request("DELETE", f"/api/v1/storage/pools/{seg(args.pool)}")
        return queued(api, task, f"delete of storage pool {args.pool}", args.wait)


def create_volume(args: argparse.Namespace) -> int:
    body = {"name": args.name, "capacity_bytes": parse_size(args.size), "format": args.format}
    with client_for(load_config(args)) as api:
        out = api.post(f"/api/v1/storage/pools/{seg(args.pool)}/volumes", body)
        return queued(api, out["task"], f"volume {args.name} in {args.pool} recorded", args.wait)


def list_volumes(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        rows = api.get(f"/api/v1/storage/pools/{seg(args.pool)}/volumes")["volumes"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = [("ID", "NAME", "FORMAT", "CAPACITY", "ALLOCATED", "STATE", "PATH")]
    for v in rows:
        out.append((str(v["id"]), v["name"], v["format"], human(v["capacity_bytes"]), human(v["allocation_bytes"]),
                    v["state"], v["path"] or "-"))  # fmt: skip
    table(out)
    return 0


def refresh_volume(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        task = api.post(f"/api/v1/storage/pools/{seg(args.pool)}/volumes/{seg(args.volume)}/refresh")
        return queued(api, task, f"refresh of volume {args.volume}", args.wait)


def delete_volume(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        task = api.request("DELETE", f"/api/v1/storage/pools/{seg(args.pool)}/volumes/{seg(args.volume)}")
        return queued(api, task, f"delete of volume {args.volume}", args.wait)
