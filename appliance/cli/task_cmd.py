"""`drover task list|show|cancel|wait`: the task queue through the API; wait follows progress on the terminal."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config
from appliance.client import Client
from appliance.errors import DroverError

# `task wait` exit codes: 0 finished, 10 failed, 11 canceled (a task that could not run is not a CLI error).
FAILED_EXIT = 10
CANCELED_EXIT = 11


def register(sub: Any) -> None:
    p = sub.add_parser("task", help="the task queue: list, show, cancel (abort a migration), wait")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="recent tasks, newest first")
    ls.add_argument("--state", choices=["queued", "running", "finished", "failed", "canceled"])
    ls.add_argument("--vm", help="only this VM's tasks")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_tasks)
    show = verbs.add_parser("show", help="one task: state, progress, result or error")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_task)
    cancel = verbs.add_parser("cancel", help="cancel a queued task, or abort a running migration")
    cancel.add_argument("id", type=int)
    cancel.set_defaults(func=cancel_task)
    wait = verbs.add_parser("wait", help="follow a task's progress until it ends (exit 0 finished, 10 failed)")
    wait.add_argument("id", type=int)
    wait.add_argument("--timeout", type=float, default=0, metavar="SECONDS", help="give up after this (0: never)")
    wait.set_defaults(func=wait_task)


def table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def list_tasks(args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.state:
        params["state"] = args.state
    if args.vm:
        params["vm"] = args.vm
    with client_for(load_config(args)) as api:
        rows = api.get("/api/v1/tasks", params)["tasks"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = [("ID", "TYPE", "TARGET", "STATE", "PROGRESS", "BY", "ERROR")]
    for t in rows:
        out.append((str(t["id"]), t["type"], f"{t['target_kind']} {t['target_id']}", t["state"],
                    f"{t['progress'] * 100:.0f}%", t["created_by"] or "-", (t["error"] or "")[:60]))  # fmt: skip
    table(out)
    return 0


def show_task(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        t = api.get(f"/api/v1/tasks/{args.id}")
    if args.json:
        print(json.dumps(t, indent=2))
        return 0
    for key in ("id", "type", "target_kind", "target_id", "state", "progress", "message", "attempts", "created_by",
                "created_at", "started_at", "finished_at", "error"):  # fmt: skip
        print(f"{key + ':':<14}{t[key] if t[key] not in (None, '') else '-'}")
    if t["result"]:
        print(f"{'result:':<14}{json.dumps(t['result'])}")
    return 0


def cancel_task(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        t = api.post(f"/api/v1/tasks/{args.id}/cancel")
    if t["state"] == "canceled":
        print(f"task {t['id']} canceled")
    else:
        print(f"task {t['id']} is running: abort asked for (`drover task wait {t['id']}` follows it)")
    return 0


def follow(api: Client, task_id: int, timeout: float = 0, out: Any = None) -> int:
    """Print the task's progress as it changes until it ends; the exit code of `task wait`."""
    out = out or sys.stdout
    deadline = time.monotonic() + timeout if timeout else None
    last = ""
    while True:
        t = api.get(f"/api/v1/tasks/{task_id}")
        line = f"task {t['id']} {t['type']}: {t['state']} {t['progress'] * 100:3.0f}% {t['message']}".rstrip()
        if line != last:
            print(line, file=out, flush=True)
            last = line
        if t["state"] == "finished":
            if t["result"]:
                print(f"result: {json.dumps(t['result'])}", file=out)
            return 0
        if t["state"] in ("failed", "canceled"):
            print(f"task {t['id']} {t['state']}: {t['error']}", file=sys.stderr)
            return FAILED_EXIT if t["state"] == "failed" else CANCELED_EXIT
        if deadline is not None and time.monotonic() > deadline:
            raise DroverError(f"task {task_id} still {t['state']} after {timeout:.0f}s", "it goes on; wait again")
        time.sleep(0.3)


def wait_task(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        return follow(api, args.id, args.timeout)
