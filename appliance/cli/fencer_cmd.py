"""`drover fencer status [--json]`: which appliance process fences (the lease), and what it is doing."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config
from appliance.text import shown


def register(sub: Any) -> None:
    p = sub.add_parser("fencer", help="the fencer: which appliance process powers off silent hosts")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    st = verbs.add_parser("status", help="the process holding the fencer lease, fences under way, recent commands")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=status)


def _ago(stamp: str) -> str:
    seconds = (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()
    return f"{seconds:.0f}s ago" if seconds >= 0 else f"in {-seconds:.0f}s"


def status(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.get("/api/v1/fencer")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    leader = out["leader"]
    if leader is None:
        print("fencer: no leader yet (no `drover serve` with fencing enabled has run against this database)")
    else:
        state = "EXPIRED: no process fences until one takes it over" if leader["expired"] else "held"
        print(f"fencer leader: {shown(leader['holder'])} (term {leader['term']}, since {_ago(leader['acquired_at'])}, "
              f"renewed {_ago(leader['renewed_at'])}, expires {_ago(leader['expires_at'])}): {state}")  # fmt: skip
    for h in out["hosts"]:
        print(f"  {shown(h['host'])}: {h['fence_state']} (episode {h['episode']}) {shown(h['note'])}")
    if out["attempts"]:
        print("recent power commands (newest first):")
        for a in out["attempts"]:
            by = f", seen by {shown(a['finished_by'])}" if a["finished_by"] and a["finished_by"] != a["holder"] else ""
            print(f"  {shown(a['host'])} episode {a['episode']} power {a['action']} #{a['number']}: {a['result']} "
                  f"(sent by {shown(a['holder'])} in term {a['term']}, {_ago(a['sent_at'])}{by})")  # fmt: skip
    return 0
