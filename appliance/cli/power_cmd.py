"""`drover host power on|off|cycle|status|show|set|remove HOST`, `drover host confirm-rebooted HOST` and
`drover vm ha VM`: power management, fencing and HA through the API, as the caller."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config
from appliance.errors import UsageError
from appliance.text import shown

_HOST_HELP = "id, DMI UUID, FQDN or short host name"


def add_host_verbs(verbs: Any) -> None:
    """`host power ...` and `host confirm-rebooted` under `drover host`."""
    p = verbs.add_parser("power", help="the host's BMC (IPMI over LAN): power on/off/cycle/status, its settings")
    actions = p.add_subparsers(dest="power_verb", metavar="ACTION", required=True)
    for action, text in (
        ("on", "power the host on"),
        ("off", "power the host off at once (no shutdown: its VMs die with it)"),
        ("cycle", "power off, then on"),
        ("status", "what the BMC says: on or off"),
    ):
        a = actions.add_parser(action, help=text)
        a.add_argument("host", help=_HOST_HELP)
        a.set_defaults(func=power_action, action=action)
    show = actions.add_parser("show", help="the BMC settings (never the password) and fencing progress")
    show.add_argument("host", help=_HOST_HELP)
    show.set_defaults(func=power_show)
    setp = actions.add_parser("set", help="set the BMC's address, port, user and password")
    setp.add_argument("host", help=_HOST_HELP)
    setp.add_argument("--address", required=True, help="the BMC's IP address or name")
    setp.add_argument("--port", type=int, default=623, help="IPMI's UDP port (default 623)")
    setp.add_argument("--user", required=True)
    setp.add_argument("--password-file", required=True, type=Path, metavar="FILE",
                      help="a file holding the password ('-': standard input); never on the command line")  # fmt: skip
    setp.set_defaults(func=power_set)
    remove = actions.add_parser("remove", help="forget the BMC settings (the host can no longer be fenced)")
    remove.add_argument("host", help=_HOST_HELP)
    remove.set_defaults(func=power_remove)
    confirm = verbs.add_parser(
        "confirm-rebooted",
        help="vouch that an unavailable host was rebooted or is off: its VMs are released, HA VMs restarted elsewhere",
    )
    confirm.add_argument("host", help=_HOST_HELP)
    confirm.set_defaults(func=confirm_rebooted)


def add_vm_verbs(verbs: Any) -> None:
    ha = verbs.add_parser("ha", help="make a VM highly available (restarted elsewhere after its host is fenced)")
    ha.add_argument("vm", help="VM id, UUID or name")
    onoff = ha.add_mutually_exclusive_group(required=True)
    onoff.add_argument("--on", dest="ha", action="store_true")
    onoff.add_argument("--off", dest="ha", action="store_false")
    ha.add_argument("--priority", type=int, default=0, help="0-1000: higher restarts first (default 0)")
    ha.set_defaults(func=vm_ha)


def _host(host: str, verb: str) -> str:
    return f"/api/v1/hosts/{quote(host, safe='')}/{verb}"


def power_action(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.post(_host(args.host, f"power/{args.action}"))
    verb = "" if args.action == "status" else f"power {args.action} done; "
    print(f"host {shown(out['host'])}: {verb}the BMC reports power {out['power']}")
    return 0


def power_show(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.get(_host(args.host, "power"))
    if not out["configured"]:
        print(f"host {shown(out['host'])}: no power management (set it with `drover host power set`)")
    else:
        print(f"host {shown(out['host'])}: BMC {shown(out['address'])}:{out['port']} as {shown(out['user'])}")
    print(f"fence: {out['fence_state']}" + (f" ({shown(out['fence_note'], 300)})" if out["fence_note"] else "")
          + (f", confirmed by {shown(out['fenced_by'])}" if out["fenced_by"] else ""))  # fmt: skip
    return 0


def read_password(path: Path) -> str:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise UsageError(f"--password-file {path}: {exc.strerror}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise UsageError(f"--password-file {path}: empty")
    return password


def power_set(args: argparse.Namespace) -> int:
    password = read_password(args.password_file)
    body = {"address": args.address, "port": args.port, "user": args.user, "password": password}
    with client_for(load_config(args)) as api:
        out = api.request("PUT", _host(args.host, "power"), body=body)
    print(f"host {shown(out['host'])}: power management set to {shown(out['address'])}:{out['port']} "
          f"as {shown(out['user'])}")  # fmt: skip
    return 0


def power_remove(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.request("DELETE", _host(args.host, "power"))
    print(f"host {shown(out['host'])}: power management removed")
    return 0


def confirm_rebooted(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.post(_host(args.host, "confirm-rebooted"))
    tasks = out["ha_restart_tasks"]
    print(f"host {shown(out['host'])} fenced ({shown(out['fence_note'])}); "
          + (f"HA restart tasks queued: {', '.join(map(str, tasks))}" if tasks else "no HA VM to restart"))  # fmt: skip
    return 0


def vm_ha(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        out = api.request("PUT", f"/api/v1/vms/{quote(args.vm, safe='')}/ha",
                          body={"ha": args.ha, "priority": args.priority})  # fmt: skip
    state = f"highly available (priority {out['ha_priority']})" if out["ha"] else "not highly available"
    print(f"VM {shown(out['name'])} is {state}")
    return 0
