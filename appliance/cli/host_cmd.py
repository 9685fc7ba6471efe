"""`drover host list|show|approve|maintenance|activate|clear|remove|token`: hosts through the API, as the caller."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from appliance.cli import network_cmd
from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config, paging
from appliance.cli.power_cmd import add_host_verbs as add_power_verbs
from appliance.cli.power_cmd import read_password
from appliance.errors import UsageError
from appliance.text import shown
from nodeagent import wire

_HOST_HELP = "id, DMI UUID, FQDN or short host name"


def register(sub: Any) -> None:
    p = sub.add_parser("host", help="hypervisor hosts: list, show, approve, maintenance, remove, enrolment tokens")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="every host with its state")
    ls.add_argument("--json", action="store_true")
    paging(ls)
    ls.set_defaults(func=list_hosts)
    show = verbs.add_parser("show", help="one host's facts, NICs, disks and VMs")
    show.add_argument("host", help=_HOST_HELP)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_host)
    approve = verbs.add_parser("approve", help="approve a pending host; its next heartbeat collects its keytab")
    approve.add_argument("host", help=_HOST_HELP)
    approve.add_argument("--claim", type=int, metavar="ID", help="which machine, when several claim the host")
    approve.set_defaults(func=approve_host)
    enrol = verbs.add_parser(
        "enrol", help="open (or list, or close) an enrolment window: machines PXE-booting in it get a token"
    )
    what = enrol.add_mutually_exclusive_group(required=True)
    what.add_argument("--window", type=_duration, metavar="DURATION", help="open one for this long: 90s, 30m, 2h")
    what.add_argument("--list", action="store_true", help="the open windows (with --all: every window)")
    what.add_argument("--close", nargs="?", const=0, type=int, metavar="ID", help="close one window, or all")
    what.add_argument("--power", nargs=2, metavar=("ACTION", "ID"),
                      help="on, off or status of the machine window ID is for, through its BMC")  # fmt: skip
    enrol.add_argument("--count", type=int, default=1, metavar="N", help="how many machines (default 1)")
    enrol.add_argument("--mac", action="append", default=[], metavar="MAC", help="only this MAC (repeatable)")
    enrol.add_argument("--note", default="", help="free text kept with the window")
    enrol.add_argument("--all", action="store_true", help="with --list: closed and expired windows too")
    cold = enrol.add_argument_group("provisioning from cold: the BMC of the one machine (one --mac) the window is for")
    cold.add_argument("--bmc-address", metavar="ADDRESS", help="its BMC's IP address or name (IPMI over LAN)")
    cold.add_argument("--bmc-port", type=int, default=623, metavar="PORT", help="IPMI's UDP port (default 623)")
    cold.add_argument("--bmc-user", metavar="USER")
    cold.add_argument("--bmc-password-file", type=Path, metavar="FILE",
                      help="a file holding the password ('-': standard input); never on the command line")  # fmt: skip
    cold.add_argument("--power-on", action="store_true",
                      help="power the machine on through its BMC once the window is open")  # fmt: skip
    enrol.set_defaults(func=enrol_cmd)
    maint = verbs.add_parser("maintenance", help="no new VMs on an approved host; libvirt and its VMs stay followed")
    maint.add_argument("host", help=_HOST_HELP)
    maint.add_argument("--reason", default="", metavar="TEXT", help="why, for the next admin (`host show`)")
    maint.set_defaults(func=maintenance_host)
    activate = verbs.add_parser("activate", help="end maintenance: available, or unavailable until libvirt answers")
    activate.add_argument("host", help=_HOST_HELP)
    activate.set_defaults(func=activate_host)
    network_cmd.register_host_verb(verbs)
    clear = verbs.add_parser("clear", help="migrate every running VM off the host (a clear host task)")
    clear.add_argument("host", help=_HOST_HELP)
    clear.add_argument("--wait", action="store_true", help="follow the task to its end")
    clear.set_defaults(func=clear_host)
    remove = verbs.add_parser(
        "remove", help="forget a host: its record, Kerberos principal and tokens (a new boot enrols it anew)"
    )
    remove.add_argument("host", help=_HOST_HELP)
    remove.add_argument("--force", action="store_true", help="even with VMs running (they stay, on no host)")
    remove.set_defaults(func=remove_host)
    metrics = verbs.add_parser("metrics", help="a host's latest collectd values, and one series as a sparkline")
    metrics.add_argument("host", help=_HOST_HELP)
    metrics.add_argument(
        "--series", action="append", default=[], metavar="NAME",
        help=f"draw this series over --since (repeatable; default: {', '.join(_SPARK_DEFAULT)})",
    )  # fmt: skip
    metrics.add_argument("--since", default="1h", metavar="DURATION", help="how far back to draw: 30m, 6h, 2d")
    metrics.add_argument("--json", action="store_true", help="print the API's JSON answers")
    metrics.set_defaults(func=host_metrics)
    token = verbs.add_parser("token", help="mint a one-time enrolment token (printed once)")
    token.add_argument("--ttl", type=int, default=24 * 3600, metavar="SECONDS", help="lifetime (default: 1 day)")
    token.add_argument("--mac", help="only a node booting from this MAC may use it")
    token.add_argument("--uuid", help="only the machine with this DMI UUID may use it")
    token.add_argument("--note", default="", help="free text kept with the token")
    token.set_defaults(func=mint_token)
    add_power_verbs(verbs)  # power on|off|cycle|status|show|set|remove, confirm-rebooted


_SHOW = (
    "id", "hostname", "uuid", "state", "state_reason", "state_changed_at", "libvirt", "approved_by", "libvirt_uri",
    "cpu_model", "cpu_count", "cpu_cores", "cpu_sockets", "virtualization", "memory_mib", "hypervisor_type",
    "last_heartbeat_at",
)  # fmt: skip


# Drawn when no --series is given: what an admin looks at first.
_SPARK_DEFAULT = ("load_load_shortterm", "cpu_percent", "memory_memory")
_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    return "".join(_BARS[0 if span == 0 else min(7, int((v - low) / span * 8))] for v in values)


def _labels(labels: dict[str, str]) -> str:
    shown = {k: v for k, v in labels.items() if k != "host"}
    return "{" + ",".join(f"{k}={v}" for k, v in sorted(shown.items())) + "}" if shown else ""


def _number(value: float) -> str:
    return f"{value:.6g}"


def host_metrics(args: argparse.Namespace) -> int:
    since = args.since.strip().lstrip("-")
    if not since or since[-1] not in "smhd" or not since[:-1].replace(".", "", 1).isdigit():
        raise UsageError(f"--since {args.since!r}: not a duration like 30m, 6h or 2d")
    with client_for(load_config(args)) as api:
        latest = api.get(_path(args.host, "metrics"))
        drawn = [
            api.get(_path(args.host, "metrics"), {"series": name, "start": f"-{since}"})
            for name in (args.series or _SPARK_DEFAULT)
        ]
    if args.json:
        print(json.dumps({"latest": latest, "series": drawn}, indent=2))
        return 0
    load = latest["load"]
    print(f"host {latest['host']}: load {load['load_average']}, cpu busy {load['cpu_busy_percent']}%, "
          f"memory used {load['memory_used_mib']} MiB, VMs {load['vm_count']} "
          f"(as of {load['updated_at']})")  # fmt: skip
    if not latest["series"]:
        print("no metrics received from this host yet")
    for row in latest["series"]:
        print(f"  {row['name']}{_labels(row['labels'])} {_number(row['value'])}")
    for answer in drawn:
        for series in answer["series"]:
            points = [v for _, v in series["points"]]
            if points:
                print(f"{answer['series_name']}{_labels(series['labels'])} (last {since}, {len(points)} points, "
                      f"{_number(min(points))}..{_number(max(points))})\n  {sparkline(points)}")  # fmt: skip
    return 0


def _path(host: str, verb: str = "") -> str:
    """The API path of one host: whatever the admin typed, as one path segment."""
    return f"/api/v1/hosts/{quote(host, safe='')}" + (f"/{verb}" if verb else "")


_DURATION = re.compile(r"([0-9]+)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> int:
    """90, 90s, 30m, 2h, 1d -> seconds."""
    match = _DURATION.fullmatch(value.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration (e.g. 90s, 30m, 2h)")
    return int(match.group(1)) * _UNIT[match.group(2)]


def _mac(value: str | None) -> str | None:
    return wire.normalize_mac(value) if value else None


def list_hosts(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        rows = api.pages("/api/v1/hosts", "hosts", limit=args.limit, offset=args.offset)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("ID", "HOSTNAME", "STATE", "APPROVED", "CPUS", "MEMORY", "UUID")]
    for h in rows:
        # shown(): names come from the nodes; whatever they hold, they print as one harmless line.
        table.append((str(h["id"]), shown(h["hostname"]), h["state"], "yes" if h["approved"] else "no",
                      str(h["cpu_count"]), f"{h['memory_mib']} MiB", shown(h["uuid"])))  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def show_host(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        h = api.get(_path(args.host))
    if args.json:
        print(json.dumps(h, indent=2))
        return 0
    # The host browser's session, shown apart from the state: in maintenance the state does not follow it.
    h["libvirt"] = "connected" if h["libvirt_connected"] else "not connected"
    for key in _SHOW:
        print(f"{key + ':':<19}{shown(h[key], 200) if h[key] not in (None, '') else '-'}")
    for nic in h["nics"]:
        boot = " (boot)" if nic["boot"] else ""
        print(f"nic:               {nic['name']} {nic['mac']} {nic['speed_mbps'] or '?'} Mb/s{boot} "
              f"{' '.join(nic['addresses'])}".rstrip())  # fmt: skip
    for disk in h["disks"]:
        print(f"disk:              {disk['name']} {disk['size_bytes'] // 2**30} GiB {disk['model']}".rstrip())
    for vm in h["vms"]:
        print(f"vm:                {vm['name']} {vm['state']} {vm['uuid']}")
    for c in h["claims"]:
        print(f"claim:             {c['id']} from {shown(c['source']) or '?'}: {shown(c['hostname'])} "
              f"boot MAC {c['boot_mac'] or '?'}, first {c['created_at']}, last seen {c['last_seen_at']}")  # fmt: skip
    if len(h["claims"]) > 1:
        print(f"hint:              {len(h['claims'])} machines claim this host: approve one with --claim ID")
    return 0


def approve_host(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        h = api.post(_path(args.host, "approve"), {"claim": args.claim} if args.claim else None)
    print(f"approved host {h['hostname']} ({h['uuid']}); it collects its keytab at its next heartbeat")
    return 0


def maintenance_host(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else None
    with client_for(load_config(args)) as api:
        h = api.post(_path(args.host, "maintenance"), body)
    link = "connected" if h["libvirt_connected"] else "not connected"
    print(f"host {h['hostname']} (id {h['id']}) is in maintenance; libvirt {link}, its VMs are still followed")
    return 0


def activate_host(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        h = api.post(_path(args.host, "activate"))
    if h["state"] == "available":
        print(f"host {h['hostname']} (id {h['id']}) is available")
    else:
        print(f"host {h['hostname']} (id {h['id']}) is {h['state']}: libvirt is not connected; "
              "it becomes available when the host browser reaches it")  # fmt: skip
    return 0


def clear_host(args: argparse.Namespace) -> int:
    from appliance.cli.task_cmd import follow  # noqa: PLC0415 - only this verb needs it

    with client_for(load_config(args)) as api:
        task = api.post(_path(args.host, "clear"))
        print(f"task {task['id']} {task['type']} queued for host {args.host}")
        if args.wait:
            return follow(api, task["id"])
    return 0


def remove_host(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        r = api.request("DELETE", _path(args.host), params={"force": "true"} if args.force else None)
    print(f"removed host {r['hostname']} (id {r['id']}, {r['uuid']})")
    print(f"principal: {r['principal_deleted'] + ' deleted' if r['principal_deleted'] else r['principal_note']}")
    print(f"enrolment tokens invalidated: {r['tokens_invalidated']}")
    if r["vms_detached"]:
        print(f"VMs now on no host: {', '.join(r['vms_detached'])}")
    if r["tasks_canceled"]:
        print(f"queued tasks canceled: {r['tasks_canceled']}")
    return 0


def mint_token(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"ttl_seconds": args.ttl, "note": args.note}
    if args.mac:
        body["mac"] = _mac(args.mac)
    if args.uuid:
        body["uuid"] = args.uuid
    with client_for(load_config(args)) as api:
        t = api.post("/api/v1/hosts/tokens", body)
    # The token alone on the first line, so `drover host token | head -1` gives a script just the token.
    print(t["token"])
    print(f"# expires {t['expires_at']}; kernel command line: {t['kernel_args']}")
    return 0


def _print_window(w: dict[str, Any]) -> None:
    macs = ", ".join(w["macs"]) or "any MAC"
    bmc = w.get("power")
    if bmc:
        macs += f" (BMC {shown(bmc['address'])}:{bmc['port']} as {shown(bmc['user'])})"
    print(f"window {w['id']} {w['state']}: {w['hosts_served']}/{w['max_hosts']} host(s), {macs}, "
          f"until {w['expires_at']} (opened by {w['opened_by']}){' — ' + w['note'] if w['note'] else ''}")  # fmt: skip


def enrol_cmd(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        if args.list:
            rows = api.get("/api/v1/enrolment/windows", params={"all": "true"} if args.all else None)["windows"]
            for w in rows:
                _print_window(w)
            if not rows:
                print("no enrolment window is open: machines that PXE-boot now wait as pending for approval")
            return 0
        if args.power is not None:
            action, window = args.power
            if not window.isdigit():
                raise UsageError(f"--power {action} {window}: the window's id is a number (`drover host enrol --list`)")
            out = api.post(f"/api/v1/enrolment/windows/{window}/power/{quote(action, safe='')}")
            print(f"enrolment window {out['window']}: {'' if action == 'status' else f'power {action} done; '}"
                  f"the BMC of {shown(out['mac'])} reports power {out['power']}")  # fmt: skip
            return 0
        if args.close is not None:
            path = "/api/v1/enrolment/windows" + (f"/{args.close}" if args.close else "")
            closed = api.request("DELETE", path)["closed"]
            print(f"closed {len(closed)} enrolment window(s)" + "".join(f"; {w['id']}" for w in closed))
            return 0
        body: dict[str, Any] = {"seconds": args.window, "count": args.count, "macs": [_mac(m) for m in args.mac],
                                "note": args.note}  # fmt: skip
        bmc = _bmc(args)
        if bmc is not None:
            body["power"] = bmc
        w = api.post("/api/v1/enrolment/windows", body)
        _print_window(w)
        print("machines that PXE-boot from the boot service now get a one-time token and enrol without approval")
        if args.power_on:
            # The window is open whatever the BMC says next: a failure here leaves it for a retry by hand.
            on = api.post(f"/api/v1/enrolment/windows/{w['id']}/power/on")
            print(f"powered {shown(on['mac'])} on through its BMC (it reports power {on['power']}): "
                  "it PXE-boots into the window and enrols; its host inherits the BMC settings")  # fmt: skip
    return 0


def _bmc(args: argparse.Namespace) -> dict[str, Any] | None:
    """The --bmc-* options as the API's power settings; None when none is given."""
    given = [args.bmc_address, args.bmc_user, args.bmc_password_file]
    if not any(given):
        if args.power_on:
            raise UsageError("--power-on: needs the machine's BMC (--bmc-address, --bmc-user, --bmc-password-file)")
        return None
    if not all(given):
        raise UsageError("--bmc-address, --bmc-user and --bmc-password-file go together")
    return {"address": args.bmc_address, "port": args.bmc_port, "user": args.bmc_user,
            "password": read_password(args.bmc_password_file)}  # fmt: skip
