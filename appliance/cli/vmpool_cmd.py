"""`drover vmpool list|create|delete|take`: pools of identical VMs from a template, handed out to users."""

from __future__ import annotations

import argparse
import json
from typing import Any

from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config
from appliance.cli.storage_cmd import seg, table


def register(sub: Any) -> None:
    p = sub.add_parser("vmpool", help="VM pools: ready VMs made from a template that users take")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="the pools you may see, with their free VMs")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_pools)
    create = verbs.add_parser("create", help="make SIZE VMs from a template; keep PRESTARTED free ones running")
    create.add_argument("name")
    create.add_argument("--template", required=True, help="template name or id")
    create.add_argument("--size", type=int, required=True)
    create.add_argument("--prestarted", type=int, default=0)
    create.add_argument("--pool", help="hardware pool name or id (default: the default pool)")
    create.add_argument("--description", default="")
    create.set_defaults(func=create_pool)
    delete = verbs.add_parser("delete", help="delete the pool and its free VMs (refused while VMs are held)")
    delete.add_argument("vmpool", help="name or id")
    delete.set_defaults(func=delete_pool)
    take = verbs.add_parser("take", help="take a free VM of the pool: it is yours from then on")
    take.add_argument("vmpool", help="name or id")
    take.set_defaults(func=take_vm)


def list_pools(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        rows = api.get("/api/v1/vmpools")["vmpools"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = [("ID", "NAME", "TEMPLATE", "HW POOL", "SIZE", "FREE", "RUNNING", "PRESTARTED", "YOU MAY TAKE")]
    for p in rows:
        out.append((str(p["id"]), p["name"], p["template"], p["hardware_pool"], str(p["size"]), str(p["free"]),
                    str(p["free_running"]), str(p["prestarted"]), "yes" if p["may_take"] else "no"))  # fmt: skip
    table(out)
    return 0


def create_pool(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "template": args.template, "size": args.size,
                            "prestarted": args.prestarted, "description": args.description}  # fmt: skip
    if args.pool:
        body["pool"] = int(args.pool) if args.pool.isdigit() else args.pool
    with client_for(load_config(args)) as api:
        out = api.post("/api/v1/vmpools", body)
    print(f"VM pool {out['vmpool']['name']}: {args.size} VMs defined, {len(out['tasks'])} tasks queued")
    return 0


def delete_pool(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.request("DELETE", f"/api/v1/vmpools/{seg(args.vmpool)}")
    print(f"VM pool {out['deleted']} deleted; {len(out['tasks'])} tasks queued to remove its VMs")
    return 0


def take_vm(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.post(f"/api/v1/vmpools/{seg(args.vmpool)}/take", {})
    vm = out["vm"]
    print(f"VM {vm['name']} (id {vm['id']}, {vm['state']}) is yours")
    return 0
