"""`drover cluster balance [--dry-run]`: moves that even out memory and CPU load, queued as migrations."""

from __future__ import annotations

import argparse
from typing import Any

from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config


def register(sub: Any) -> None:
    p = sub.add_parser("cluster", help="clusters: balance the load across their hosts")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    bal = verbs.add_parser("balance", help="migrate VMs until the spread of host load stops improving")
    bal.add_argument("--dry-run", action="store_true", help="print the moves, queue nothing")
    bal.add_argument("--cluster", type=int, metavar="ID", help="only this cluster's hosts (default: all hosts)")
    bal.add_argument("--threshold", type=float, default=0.05, help="smallest gain in spread worth a move")
    bal.add_argument("--max-moves", type=int, default=20)
    bal.set_defaults(func=balance)


def balance(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"dry_run": args.dry_run, "threshold": args.threshold, "max_moves": args.max_moves}
    if args.cluster is not None:
        body["cluster"] = args.cluster
    with client_for(load_config(args)) as api:
        out = api.post("/api/v1/cluster/balance", body)
    if not out["moves"]:
        print("balanced: no move gains enough")
        return 0
    for m in out["moves"]:
        queued = f" (task {m['task']})" if "task" in m else ""
        print(f"{'would move' if out['dry_run'] else 'moving'} {m['vm']}: {m['from']} -> {m['to']} "
              f"(spread -{m['gain']:.3f}){queued}")  # fmt: skip
    return 0
