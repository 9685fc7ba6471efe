"""`drover vm snapshot create|list|revert|delete` and `drover vm clone`: verbs the `vm` noun takes from here."""

from __future__ import annotations

import argparse
import json
from typing import Any

from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config
from appliance.cli.storage_cmd import queued, seg, table, waits


def register_vm_verbs(verbs: Any) -> None:
    """Add `snapshot ...` and `clone` to the `drover vm` verbs."""
    snap = verbs.add_parser("snapshot", help="VM snapshots (qcow2 disks; memory too while it runs)")
    sv = snap.add_subparsers(dest="snapshot_verb", metavar="VERB", required=True)
    create = sv.add_parser("create", help="queue taking a snapshot")
    create.add_argument("vm", help="name, UUID or id")
    create.add_argument("name")
    create.add_argument("--description", default="")
    waits(create)
    create.set_defaults(func=create_snapshot)
    ls = sv.add_parser("list", help="the VM's snapshots, oldest first")
    ls.add_argument("vm", help="name, UUID or id")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_snapshots)
    revert = sv.add_parser("revert", help="queue reverting the VM to a snapshot")
    revert.add_argument("vm", help="name, UUID or id")
    revert.add_argument("snapshot", help="name or id")
    waits(revert)
    revert.set_defaults(func=revert_snapshot)
    delete = sv.add_parser("delete", help="queue deleting a snapshot (its children hang on its parent)")
    delete.add_argument("vm", help="name, UUID or id")
    delete.add_argument("snapshot", help="name or id")
    waits(delete)
    delete.set_defaults(func=delete_snapshot)
    clone = verbs.add_parser("clone", help="queue a copy of a stopped VM, disks included")
    clone.add_argument("vm", help="name, UUID or id")
    clone.add_argument("name", help="the clone's name")
    waits(clone)
    clone.set_defaults(func=clone_vm)


def _base(vm: str) -> str:
    return f"/api/v1/vms/{seg(vm)}"


def create_snapshot(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.post(f"{_base(args.vm)}/snapshots", {"name": args.name, "description": args.description})
        return queued(api, out["task"], f"snapshot {args.name} of VM {args.vm}", args.wait)


def list_snapshots(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        rows = api.get(f"{_base(args.vm)}/snapshots")["snapshots"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"VM {args.vm} has no snapshots")
        return 0
    out = [("ID", "NAME", "STATE", "PARENT", "MEMORY", "CREATED", "DESCRIPTION")]
    for r in rows:
        out.append((str(r["id"]), r["name"], r["state"], r["parent"] or "-", "yes" if r["with_memory"] else "no",
                    r["created_at"][:19], r["description"]))  # fmt: skip
    table(out)
    return 0


def revert_snapshot(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        task = api.post(f"{_base(args.vm)}/snapshots/{seg(args.snapshot)}/revert")
        return queued(api, task, f"revert of VM {args.vm} to {args.snapshot}", args.wait)


def delete_snapshot(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        task = api.request("DELETE", f"{_base(args.vm)}/snapshots/{seg(args.snapshot)}")
        return queued(api, task, f"delete of snapshot {args.snapshot}", args.wait)


def clone_vm(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.post(f"{_base(args.vm)}/clone", {"name": args.name})
        return queued(
            api, out["task"], f"clone {out['vm']['name']} (id {out['vm']['id']}) of VM {args.vm} recorded", args.wait
        )
