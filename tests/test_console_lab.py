"""VM consoles on the shared task rack: one TCG busybox guest, reached through the real `drover serve`.

The one-time ticket rules over the API and a WebSocket client (no, garbage, used, expired ticket; another
user's, another VM's, another kind's; no identity) — each refused with nothing opened on the host; the VNC
one-time password (the guest's own password and a used one are both refused by qemu directly); an RFB client
through the proxy; the serial console in the terminal (`drover vm console`); noVNC and xterm.js in Chromium
(screenshots under tests/artifacts/); a session closed when its user loses the right and when the VM stops.
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import libvirt
import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from sqlalchemy import select as sql_select
from sqlalchemy import update
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from appliance.client import Client
from appliance.console import rfb
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import ConsoleTicket
from appliance.errors import Conflict, Forbidden, UsageError
from tests.lab.appliance import ADMIN, DROVER, ROOT
from tests.lab.browser import browser, screenshot
from tests.lab.guest import BOOT_MARKER, ECHO, TICK, wait_for_text
from tests.lab.kdc import LabKdc
from tests.lab.taskrack import AsUser, TaskRack, wait_until

pytestmark = pytest.mark.lab

ANN = "con-ann"  # may control VMs (role user)
BEN = "con-ben"  # may control VMs too: another user
MO = "con-mo"  # monitor: may see, not control


@dataclass
class Guest:
    rack: TaskRack
    name: str
    vm_id: int
    uuid: str
    host_id: int
    other_id: int  # a second VM, defined and stopped: another VM's path, and one with no console


@pytest.fixture(scope="module")
def guest(task_rack: TaskRack) -> Iterator[Guest]:
    rack = task_rack
    for who, role in ((ANN, "user"), (BEN, "user"), (MO, "monitor")):
        added = rack.drover("user", "add", who, "--role", role)
        assert added.returncode == 0, added.stderr
    name, other = rack.unique("con"), rack.unique("con-off")
    for argv in (rack.guest_args(name), rack.guest_args(other)):
        made = rack.drover(*argv, "--wait", timeout=240)
        assert made.returncode == 0, made.stdout + made.stderr
    started = rack.drover("vm", "start", name, "--wait", timeout=240)
    assert started.returncode == 0, started.stdout + started.stderr
    vm = rack.vm(name)
    assert vm.host_id is not None
    wait_for_text(rack.serial_log(vm.host_id, name), BOOT_MARKER, 180)
    yield Guest(rack, name, vm.id, vm.uuid, vm.host_id, rack.vm(other).id)
    for gone in (name, other):
        rack.drover("vm", "poweroff", gone, "--wait", timeout=120)
        rack.drover("vm", "delete", gone, "--wait", timeout=120)




def ask(api: Client, vm: int | str, kind: str) -> dict[str, Any]:
    issued: dict[str, Any] = api.post(f"/api/v1/vms/{vm}/console", {"kind": kind})
    return issued


def open_ws(rack: TaskRack, path: str, ticket: str | None, auth: Client | None) -> ClientConnection:
    query = f"?ticket={quote(ticket)}" if ticket is not None else ""
    headers = {"Authorization": auth.auth.header()} if auth is not None else {}
    return connect(f"ws://127.0.0.1:{rack.served.port}{path}{query}", additional_headers=headers, open_timeout=30)


def refused(rack: TaskRack, path: str, ticket: str | None, auth: Client | None) -> None:
    with pytest.raises(InvalidStatus) as err:
        open_ws(rack, path, ticket, auth).close()
    assert err.value.response.status_code == 403


def read_until(ws: ClientConnection, text: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{text!r} not on the console within {timeout}s; got {seen[-500:]!r}")
        data = ws.recv(timeout=left)
        seen += data.decode(errors="replace") if isinstance(data, bytes) else data
    return seen


def _opened(g: Guest) -> int:
    return g.rack.served.log_text().count(f"console of VM {g.name} opened")


def secure_vnc(g: Guest) -> ET.Element:
    """The domain's VNC device as the node sees it, password included (the lab's own unix socket)."""
    conn = libvirt.open(g.rack.node_of(g.host_id).local_uri)
    try:
        xml = conn.lookupByUUIDString(g.uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    finally:
        conn.close()
    graphics = ET.fromstring(xml).find("devices/graphics[@type='vnc']")
    assert graphics is not None
    return graphics


def framebuffer_size(g: Guest) -> tuple[int, int]:
    """The guest's screen size as qemu renders it: a libvirt screenshot (PNG or PPM) read on the node."""
    conn = libvirt.open(g.rack.node_of(g.host_id).local_uri)
    try:
        stream = conn.newStream(0)
        conn.lookupByUUIDString(g.uuid).screenshot(stream, 0, 0)
        data = b""
        while len(data) < 64:
            chunk = stream.recv(4096)
            if not isinstance(chunk, bytes) or not chunk:
                break
            data += chunk
        stream.abort()
    finally:
        conn.close()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):  # the IHDR chunk comes first: width, height
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    fields = data.split()
    assert fields[0] == b"P6", data[:20]  # older qemu: PPM
    return int(fields[1]), int(fields[2])


class WsReader:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws, self.buf = ws, b""

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.ws.recv(timeout=30)
            self.buf += data if isinstance(data, bytes) else data.encode()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def rfb_server_init(ws: ClientConnection) -> tuple[int, int]:
    """Be a VNC client through the proxy, as noVNC is: RFB 3.8, security None, ClientInit; the ServerInit size."""
    reader = WsReader(ws)
    assert reader.read(12) == b"RFB 003.008\n"
    ws.send(b"RFB 003.008\n")
    assert reader.read(2) == bytes([1, rfb.SECURITY_NONE])  # no VNC password towards the client
    ws.send(bytes([rfb.SECURITY_NONE]))
    assert reader.read(4) == b"\0\0\0\0"
    ws.send(b"\x01")  # ClientInit: shared
    width, height = struct.unpack(">HH", reader.read(4))
    reader.read(16)  # pixel format
    (name_length,) = struct.unpack(">I", reader.read(4))
    reader.read(name_length)
    return width, height


async def _direct_vnc(host: str, port: int, password: str) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await rfb.authenticate(reader, writer, password)
    finally:
        writer.close()


def direct_vnc_refused(g: Guest, password: str) -> str:
    """Log in to the guest's VNC port directly (as someone who found the port would): the refusal's text."""
    graphics = secure_vnc(g)
    address = g.rack.node_of(g.host_id).address
    with pytest.raises(rfb.RfbError) as err:
        asyncio.run(_direct_vnc(address, int(graphics.get("port", "0")), password))
    return str(err.value)


def ticket_row(g: Guest, ticket: str) -> ConsoleTicket:
    with session_scope(g.rack.db) as s:
        selector = ticket.split(".", maxsplit=1)[0]
        row = s.scalars(sql_select(ConsoleTicket).where(ConsoleTicket.selector == selector)).one()
        s.expunge(row)
        return row


def test_who_may_ask_for_a_ticket_and_for_what(guest: Guest, client_as: AsUser) -> None:
    g = guest
    issued = ask(client_as(ANN), g.name, "serial")
    assert issued["kind"] == "serial" and issued["vm"] == {"id": g.vm_id, "name": g.name}
    assert issued["websocket"] == f"/api/v1/vms/{g.vm_id}/console/serial"
    row = ticket_row(g, issued["ticket"])
    assert row.principal.startswith(ANN + "@") and row.used_at is None
    assert timedelta(seconds=50) < row.expires_at - row.created_at <= timedelta(seconds=60)
    assert issued["ticket"].split(".")[1] not in row.secret_hash  # only the hash is kept
    with pytest.raises(Forbidden, match="may not open the console"):
        ask(client_as(MO), g.name, "vnc")  # monitor: sees the VM, may not control it
    with pytest.raises(Conflict, match="no console now"):
        ask(client_as(ANN), g.other_id, "vnc")  # stopped
    with pytest.raises(UsageError, match="kind"):
        ask(client_as(ANN), g.name, "spice")
    with pytest.raises(UsageError, match="colour: unknown field"):
        client_as(ANN).post(f"/api/v1/vms/{g.name}/console", {"kind": "vnc", "colour": "red"})


def test_a_ticket_is_refused_unless_it_is_this_users_for_this_console_now(guest: Guest, client_as: AsUser) -> None:
    g = guest
    rack = g.rack
    ann, ben = client_as(ANN), client_as(BEN)
    serial, vnc = f"/api/v1/vms/{g.vm_id}/console/serial", f"/api/v1/vms/{g.vm_id}/console/vnc"
    password_before = secure_vnc(g).get("passwd")
    opened_before = _opened(g)
    issued = ask(ann, g.vm_id, "serial")
    ticket = issued["ticket"]
    refused(rack, serial, None, ann)  # no ticket
    refused(rack, serial, ticket.split(".")[0] + ".forged", ann)  # right selector, wrong secret
    refused(rack, serial, ticket, None)  # no identity with it
    refused(rack, serial, ticket, ben)  # another user's ticket
    refused(rack, vnc, ticket, ann)  # another kind of console
    refused(rack, f"/api/v1/vms/{g.other_id}/console/serial", ticket, ann)  # another VM
    refused(rack, f"/ui/vms/{g.vm_id}/console/serial/ws", ticket, None)  # the UI's socket without its cookie
    # None of these used it up, opened a console (the server logs each it opens) or touched the VNC display.
    assert ticket_row(g, ticket).used_at is None
    assert _opened(g) == opened_before
    assert secure_vnc(g).get("passwd") == password_before
    with open_ws(rack, serial, ticket, ann) as ws:
        read_until(ws, TICK, 30)
    assert ticket_row(g, ticket).used_at is not None
    refused(rack, serial, ticket, ann)  # used
    late = ask(ann, g.vm_id, "serial")["ticket"]
    with session_scope(rack.db) as s:  # its 60 s went by
        s.execute(update(ConsoleTicket).where(ConsoleTicket.selector == late.split(".")[0])
                  .values(expires_at=utcnow() - timedelta(seconds=1)))  # fmt: skip
    refused(rack, serial, late, ann)
    assert secure_vnc(g).get("passwd") == password_before
    assert _opened(g) == opened_before + 1  # the one good connection
    log = rack.served.log_text()
    assert ticket.split(".")[0] in log and ticket.split(".")[1] not in log  # the secret half never logged


def test_vnc_through_the_proxy_with_a_one_time_password(guest: Guest, client_as: AsUser) -> None:
    g = guest
    ann = client_as(ANN)
    own = secure_vnc(g).get("passwd")
    assert own and len(own) == 8  # the random password the domain was defined with, never shown
    issued = ask(ann, g.vm_id, "vnc")
    t0 = time.monotonic()
    with open_ws(g.rack, issued["websocket"], issued["ticket"], ann) as ws:
        width, height = rfb_server_init(ws)
        print(f"VNC through the proxy: ServerInit {width}x{height} after {time.monotonic() - t0:.2f}s")
        assert (width, height) == framebuffer_size(g)
        after = secure_vnc(g)
        # The one-time password the proxy logged in with is replaced by another, already expired.
        assert after.get("passwd") not in (None, own)
        assert after.get("passwdValidTo") is not None
        # Someone who found the VNC port gets nowhere: not with the domain's own password, nor the current one.
        for password in (own, after.get("passwd") or ""):
            assert "refused the one-time password" in direct_vnc_refused(g, password)
        # The session still works after the password changed: ask for a frame, get a FramebufferUpdate.
        ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        deadline = time.monotonic() + 30
        while True:
            data = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(data, bytes) and data[:1] == b"\x00":
                break


def test_serial_console_in_the_terminal_with_drover_vm_console(guest: Guest) -> None:
    g = guest
    rack = g.rack
    env = rack.served.cli_env(ANN)
    proc = subprocess.Popen([*DROVER, "vm", "console", g.name, "--serial"], env=env, cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        seen = _read_proc(proc, TICK, 60)
        proc.stdin.write(b"from-the-cli\n")
        proc.stdin.flush()
        seen += _read_proc(proc, f"{ECHO} from-the-cli", 30)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert b"connected to VM" in err, err
    # On a terminal: raw keys (Enter is a carriage return the guest's tty turns into a newline), Ctrl-] leaves.
    master, slave = pty.openpty()
    proc = subprocess.Popen([*DROVER, "vm", "console", g.name], env=env, cwd=ROOT, stdin=slave,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    os.close(slave)
    try:
        _read_proc(proc, TICK, 60)
        os.write(master, b"on-a-tty\r")
        _read_proc(proc, f"{ECHO} on-a-tty", 30)
        os.write(master, b"\x1d")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=20)
        os.close(master)
    assert b"Ctrl-] leaves" in err and b"closed" in err, err
    url = rack.drover("vm", "console", g.name, "--vnc", principal=ANN)
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip() == f"{rack.served.url}/ui/vms/{g.vm_id}/console/vnc"
    mo = rack.drover("vm", "console", g.name, principal=MO)
    assert mo.returncode == 9 and "may not open the console" in mo.stderr  # Forbidden's exit code
    assert mo.stdout == ""


def _read_proc(proc: subprocess.Popen[bytes], text: str, timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"{text!r} not from drover vm console; got {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            seen += os.read(fd, 65536)
    return seen.decode(errors="replace")


def connected(page: Page, g: Guest, timeout: float = 60) -> None:
    """Wait for a console page to say it is connected; else fail with what it and the server said."""
    try:
        page.wait_for_selector("body[data-state='connected']", timeout=timeout * 1000)
    except PlaywrightTimeout:
        status = page.inner_text("#console-status") if page.query_selector("#console-status") else page.content()
        raise AssertionError(f"console page not connected: {status}\n{g.rack.served.log_text()[-3000:]}") from None


def _browser(g: Guest, kdc: LabKdc, tmp_path: Any) -> Any:
    return browser(tmp_path / "chromium", kdc.krb5_conf, kdc.ticket(ADMIN))


def test_serial_console_page_shows_the_guest_and_sends_keys(guest: Guest, kdc: LabKdc, tmp_path: Any) -> None:
    g = guest
    with _browser(g, kdc, tmp_path) as context:
        page = context.new_page()
        page.goto(f"{g.rack.served.url}/ui/vms/{g.vm_id}")
        page.wait_for_selector("#console-serial", timeout=20000)
        screenshot(context, "console-vm-page")  # the VM's page with its two console buttons
        with context.expect_page() as popup:
            page.click("#console-serial")  # a window of its own
        console = popup.value
        connected(console, g)
        console.wait_for_function(f"document.querySelector('.xterm-rows').innerText.includes('{TICK}')",
                                  timeout=30000)  # fmt: skip
        console.click("#terminal")
        console.keyboard.type("typed-in-chromium")
        console.keyboard.press("Enter")
        console.wait_for_function(
            f"document.querySelector('.xterm-rows').innerText.includes('{ECHO} typed-in-chromium')", timeout=30000
        )
        screenshot(context, "console-serial")


def test_vnc_console_page_draws_the_guest_screen(guest: Guest, kdc: LabKdc, tmp_path: Any) -> None:
    g = guest
    width, height = framebuffer_size(g)
    with _browser(g, kdc, tmp_path) as context:
        page = context.new_page()
        page.goto(f"{g.rack.served.url}/ui/vms/{g.vm_id}/console/vnc")
        connected(page, g)
        page.wait_for_function(f"(() => {{ const c = document.querySelector('#screen canvas');"
                               f" return c && c.width === {width} && c.height === {height}; }})()",
                               timeout=20000)  # fmt: skip
        time.sleep(1.0)  # the first frame drawn
        # The canvas holds the guest's pixels: not all one colour (SeaBIOS/kernel text on the VGA screen).
        distinct = page.evaluate("""() => { const c = document.querySelector('#screen canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const seen = new Set();
            for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] << 16 | d[i+1] << 8 | d[i+2]);
            return seen.size; }""")
        assert distinct >= 2, "the canvas is blank"
        shot = screenshot(context, "console-vnc")
        assert shot.stat().st_size > 5000
        page.click("#fullscreen")  # the pop-out window's screen fills the display
        page.wait_for_function("document.fullscreenElement && document.fullscreenElement.id === 'screen'",
                               timeout=10000)  # fmt: skip
        assert page.get_attribute("body", "data-state") == "connected"


def test_the_console_pages_refuse_who_may_not_control_the_vm(
    guest: Guest, kdc: LabKdc, tmp_path: Any, client_as: AsUser
) -> None:
    g = guest
    base = f"{g.rack.served.url}/ui/vms/{g.vm_id}/console"
    before = _tickets(g)
    with browser(tmp_path / "mo", kdc.krb5_conf, kdc.ticket(MO)) as context:
        page = context.new_page()
        answer = page.goto(f"{base}/vnc")
        assert answer is not None and answer.status == 403
        assert "may not open the console" in page.inner_text("body")
        csrf = page.evaluate("() => fetch('/ui/vms').then(r => r.text())")
        token = csrf.split('"X-CSRF-Token": "', 1)[1].split('"', 1)[0]
        status = page.evaluate("""([url, token]) => fetch(url, {method: 'POST', headers: {'X-CSRF-Token': token,
            'Content-Type': 'application/x-www-form-urlencoded'}, body: 'kind=serial'}).then(r => r.status)""",
                               [base, token])  # fmt: skip
        assert status == 403
    with _browser(g, kdc, tmp_path) as context:  # an admin, but a POST without the session's CSRF token
        page = context.new_page()
        page.goto(f"{base}/serial")
        connected(page, g)
        used = _tickets(g)
        status = page.evaluate("""(url) => fetch(url, {method: 'POST', headers: {'Content-Type':
            'application/x-www-form-urlencoded'}, body: 'kind=serial'}).then(r => r.status)""", base)
        assert status == 403
        assert _tickets(g) == used  # the page's own ticket only
        # A ticket the page's session got is bound to that sign-in: the same user over the API is refused.
        issued = page.evaluate("""([url, token]) => fetch(url, {method: 'POST', headers: {'X-CSRF-Token': token,
            'Content-Type': 'application/x-www-form-urlencoded'}, body: 'kind=serial'}).then(r => r.json())""",
                               [base, page.get_attribute("body", "data-csrf")])  # fmt: skip
        refused(g.rack, f"/api/v1/vms/{g.vm_id}/console/serial", issued["ticket"], client_as(ADMIN))
        assert ticket_row(g, issued["ticket"]).used_at is None
        # The session's cookie with it, from another site's page (a cross-site WebSocket): refused; from ours: in.
        cookie = next(c["value"] for c in context.cookies() if c["name"] == "drover_session")
        ws_url = f"ws://127.0.0.1:{g.rack.served.port}{issued['websocket']}?ticket={quote(issued['ticket'])}"
        headers = {"Cookie": f"drover_session={cookie}"}
        with pytest.raises(InvalidStatus) as err:
            connect(ws_url, additional_headers=headers, origin=Origin("http://evil.example.test")).close()
        assert err.value.response.status_code == 403
        assert ticket_row(g, issued["ticket"]).used_at is None
        own = f"http://127.0.0.1:{g.rack.served.port}"
        with connect(ws_url, additional_headers=headers, origin=Origin(own)) as ws:
            read_until(ws, TICK, 30)
    assert used == before + 1 and _tickets(g) == before + 2  # the page's, and the one asked for here


def _tickets(g: Guest) -> int:
    with session_scope(g.rack.db) as s:
        return len(s.scalars(sql_select(ConsoleTicket.id).where(ConsoleTicket.vm_id == g.vm_id)).all())


def test_a_console_closes_when_its_user_loses_the_right(guest: Guest, client_as: AsUser) -> None:
    g = guest
    rack = g.rack
    ben = client_as(BEN)
    issued = ask(ben, g.vm_id, "serial")
    with open_ws(rack, issued["websocket"], issued["ticket"], ben) as ws:
        read_until(ws, TICK, 30)
        t0 = time.monotonic()
        removed = rack.drover("user", "remove", BEN)
        assert removed.returncode == 0, removed.stderr
        t1 = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while time.monotonic() - t1 < 30:
                ws.recv(timeout=30)
        took = time.monotonic() - t1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "may no longer control" in closed.value.rcvd.reason
    print(f"console closed {took:.2f}s after `drover user remove` returned ({t1 - t0:.2f}s after it started)")
    assert took < 15


def test_consoles_close_when_the_vm_migrates_and_open_again_on_its_new_host(guest: Guest, client_as: AsUser) -> None:
    g = guest
    rack = g.rack
    ann = client_as(ANN)
    serial, vnc = ask(ann, g.vm_id, "serial"), ask(ann, g.vm_id, "vnc")
    with open_ws(rack, serial["websocket"], serial["ticket"], ann) as s_ws, \
            open_ws(rack, vnc["websocket"], vnc["ticket"], ann) as v_ws:  # fmt: skip
        read_until(s_ws, TICK, 30)
        rfb_server_init(v_ws)
        moved = rack.drover("vm", "migrate", g.name, "--wait", timeout=240)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        for ws in (s_ws, v_ws):
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=30)
    vm = rack.vm(g.name)
    assert vm.host_id is not None and vm.host_id != g.host_id
    g.host_id = vm.host_id
    # The definition moved with the VM: its VNC display listens on the new node's address, its password is
    # still one nobody knows, and new tickets reach both consoles there.
    moved_vnc = secure_vnc(g)
    listen = moved_vnc.find("listen")
    assert moved_vnc.get("passwd") and listen is not None
    assert listen.get("address") == rack.node_of(g.host_id).address  # the new node's own vnc_listen
    serial, vnc = ask(ann, g.vm_id, "serial"), ask(ann, g.vm_id, "vnc")
    with open_ws(rack, vnc["websocket"], vnc["ticket"], ann) as v_ws:
        assert rfb_server_init(v_ws) == framebuffer_size(g)
    with open_ws(rack, serial["websocket"], serial["ticket"], ann) as s_ws:
        s_ws.send(b"after-the-move\n")
        read_until(s_ws, f"{ECHO} after-the-move", 30)


def test_a_console_closes_when_the_vm_stops(guest: Guest, client_as: AsUser) -> None:
    g = guest
    rack = g.rack
    ann = client_as(ANN)
    serial, vnc = ask(ann, g.vm_id, "serial"), ask(ann, g.vm_id, "vnc")
    with open_ws(rack, serial["websocket"], serial["ticket"], ann) as s_ws, \
            open_ws(rack, vnc["websocket"], vnc["ticket"], ann) as v_ws:  # fmt: skip
        read_until(s_ws, TICK, 30)
        rfb_server_init(v_ws)
        off = rack.drover("vm", "poweroff", g.name, "--wait", timeout=120)
        assert off.returncode == 0, off.stderr
        for ws in (s_ws, v_ws):
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=30)
    wait_until("the VM stopped", lambda: str(rack.vm(g.name).state) == "stopped", 30)
