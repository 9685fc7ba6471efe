"""`drover vm console NAME [--serial|--vnc] [--ticket]`: a VM's console from the terminal.

--serial (the default) asks the API for a one-time serial ticket and attaches this terminal to the VM's
serial console through the appliance's WebSocket (Ctrl-] leaves when stdin is a terminal). --vnc prints the
URL of the graphical console page, which signs in with the browser's own Kerberos ticket and asks for its own
ticket. --ticket prints a fresh ticket as JSON, for another client.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import termios
import threading
import tty
from typing import Any
from urllib.parse import quote

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config
from appliance.client import Client
from appliance.errors import DroverError, Forbidden

ESCAPE = b"\x1d"  # Ctrl-], as in telnet and virsh console


def register(verbs: Any) -> None:
    p = verbs.add_parser("console", help="attach to a VM's serial console, or print its graphical console's URL")
    p.add_argument("vm", help="id, UUID or name")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--serial", dest="kind", action="store_const", const="serial", help="the serial console "
                      "in this terminal (default)")  # fmt: skip
    kind.add_argument("--vnc", dest="kind", action="store_const", const="vnc", help="print the URL of the "
                      "graphical console (noVNC) for a browser")  # fmt: skip
    p.add_argument("--ticket", action="store_true", help="print a one-time ticket as JSON instead")
    p.set_defaults(func=console, kind="serial")


def _vm_path(vm: str) -> str:
    return f"/api/v1/vms/{quote(vm, safe='')}"


def console(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        if args.ticket:
            print(json.dumps(api.post(_vm_path(args.vm) + "/console", {"kind": args.kind}), indent=2))
            return 0
        if args.kind == "vnc":
            vm = api.get(_vm_path(args.vm))
            if vm["state"] not in ("running", "paused"):
                raise DroverError(f"VM {vm['name']} is {vm['state']}: it has no console now", "start it first")
            print(f"{api.base_url}/ui/vms/{vm['id']}/console/vnc")
            return 0
        issued = api.post(_vm_path(args.vm) + "/console", {"kind": "serial"})
        return attach(api, issued)


def socket_url(base_url: str, issued: dict[str, Any]) -> str:
    scheme, _, rest = base_url.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{issued['websocket']}?ticket={quote(issued['ticket'])}"


def attach(api: Client, issued: dict[str, Any]) -> int:
    url = socket_url(api.base_url, issued)
    try:
        ws = connect(url, additional_headers={"Authorization": api.auth.header()}, open_timeout=30,
                     max_size=2**20)  # fmt: skip
    except InvalidStatus as exc:
        raise Forbidden(f"the appliance refused the console ({exc.response.status_code})",
                        "ask for a new ticket: each is good for one connection, briefly") from None  # fmt: skip
    except (OSError, WebSocketException, TimeoutError) as exc:
        raise DroverError(f"cannot open the console WebSocket: {exc}") from None
    interactive = os.isatty(sys.stdin.fileno())
    name = issued["vm"]["name"]
    print(f"connected to VM {name}'s serial console" + (" (Ctrl-] leaves)" if interactive else ""), file=sys.stderr)
    saved = termios.tcgetattr(sys.stdin.fileno()) if interactive else None
    try:
        if saved is not None:
            tty.setraw(sys.stdin.fileno())
        threading.Thread(target=_keys, args=(ws, interactive), name="console-keys", daemon=True).start()
        with contextlib.suppress(ConnectionClosed):
            for message in ws:
                data = message if isinstance(message, bytes) else message.encode()
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        ws.close()
    reason = ws.close_reason or "closed"
    print(f"\r\nconsole of VM {name} closed: {reason}", file=sys.stderr)
    return 0


def _keys(ws: ClientConnection, interactive: bool) -> None:
    """stdin to the guest; Ctrl-] on a terminal closes. At the end of piped input the output keeps coming."""
    fd = sys.stdin.fileno()
    while True:
        try:
            data = os.read(fd, 1024)
        except OSError:
            return
        if not data:
            return
        if interactive and ESCAPE in data:
            data = data.split(ESCAPE, 1)[0]
            with contextlib.suppress(ConnectionClosed):
                if data:
                    ws.send(data)
                ws.close()
            return
        try:
            ws.send(data)
        except ConnectionClosed:
            return
