"""`drover template import FILE --pool P|list|delete`: base images for new VMs, uploaded into a storage pool."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from appliance import imagefile
from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config
from appliance.cli.storage_cmd import human, queued, seg, table, waits


def register(sub: Any) -> None:
    p = sub.add_parser("template", help="templates: a qcow2, raw or ISO base image in a storage pool")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    imp = verbs.add_parser("import", help="upload a local qcow2, raw or ISO file into a storage pool")
    imp.add_argument("file", type=Path)
    imp.add_argument("--pool", required=True, help="storage pool name or id")
    imp.add_argument("--name", help="template name (default: the file name without its suffix)")
    imp.add_argument("--vcpus", type=int, default=1)
    imp.add_argument("--memory", type=int, default=512, metavar="MIB")
    imp.add_argument("--description", default="")
    waits(imp)
    imp.set_defaults(func=import_template)
    ls = verbs.add_parser("list", help="every template you may see")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_templates)
    delete = verbs.add_parser("delete", help="forget a template and queue deleting its base image")
    delete.add_argument("template", help="name or id")
    waits(delete)
    delete.set_defaults(func=delete_template)


def import_template(args: argparse.Namespace) -> int:
    # Checked here first for a quick answer; the appliance checks the bytes it receives again.
    kind = imagefile.detect(args.file)
    name = args.name or args.file.name.split(".")[0]
    params = {"name": name, "pool": args.pool, "vcpus": str(args.vcpus), "memory_mib": str(args.memory)}
    if args.description:
        params["description"] = args.description
    size = human(args.file.stat().st_size)
    with client_for(load_config(args)) as api:
        out = api.upload("/api/v1/templates", args.file, params)
        return queued(
            api, out["task"], f"template {name} ({kind}, {size}) sent; its upload into {args.pool}", args.wait
        )


def list_templates(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        rows = api.get("/api/v1/templates")["templates"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = [("ID", "NAME", "VCPUS", "MEMORY", "POOL", "VOLUME", "FORMAT", "SIZE", "STATE")]
    for t in rows:
        v = t["volume"] or {}
        out.append((str(t["id"]), t["name"], str(t["vcpus"]), f"{t['memory_mib']} MiB", v.get("pool", "-"),
                    v.get("name", "-"), v.get("format", "-"), human(v.get("capacity_bytes")),
                    v.get("state", "-")))  # fmt: skip
    table(out)
    return 0


def delete_template(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.request("DELETE", f"/api/v1/templates/{seg(args.template)}")
        print(f"template {out['deleted']} deleted")
        return queued(api, out["task"], "its base image's delete", args.wait) if out["task"] else 0
