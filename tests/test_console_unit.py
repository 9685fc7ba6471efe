"""Console tickets against a real database (SQLite and the lab's PostgreSQL), and the pieces of the console
proxy that need no host: the VNC key quirk, the live-XML edits, the guests' VNC device, the node's qemu.conf.
The proxy itself, qemu's VNC server and libvirt streams are in test_console_lab.py."""

from __future__ import annotations

import threading
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, update

from appliance.console import rfb, tickets
from appliance.console.hostlink import ConsoleUnavailable, password_xml, vnc_display
from appliance.console.tickets import TicketRefused
from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import (
    BootDevice,
    ConsoleKind,
    ConsoleTicket,
    Host,
    HypervisorType,
    Permission,
    User,
    Vm,
    VmState,
)
from appliance.db.models.users import Role
from appliance.errors import Conflict, Forbidden, UsageError
from appliance.hosts import default_pool
from nodeagent import libvirtd
from taskengine import domainxml

ANN, BEN, MO = "ann@LAB", "ben@LAB", "mo@LAB"


def _setup(engine: Engine) -> tuple[int, int]:
    """A running VM on a host, a stopped one; ann and ben hold `user`, mo `monitor` (global roles)."""
    with session_scope(engine) as s:
        pool = default_pool(s)
        host = Host(uuid=str(uuid.uuid4()), hostname="n1.example.test", hardware_pool_id=pool.id,
                    hypervisor_type=HypervisorType.QEMU)  # fmt: skip
        s.add(host)
        for who, role in ((ANN, Role.USER), (BEN, Role.USER), (MO, Role.MONITOR)):
            user = User(principal=who)
            s.add(user)
            s.flush()
            s.add(Permission(user=user, role=role, hardware_pool_id=None))
        s.flush()
        up = Vm(uuid=str(uuid.uuid4()), name="up", vcpus=1, memory_mib=64, pool=pool, state=VmState.RUNNING, host=host)
        down = Vm(uuid=str(uuid.uuid4()), name="down", vcpus=1, memory_mib=64, pool=pool, state=VmState.STOPPED)
        s.add_all([up, down])
        s.flush()
        return up.id, down.id


def _issue(engine: Engine, vm_id: int, who: str = ANN, kind: ConsoleKind = ConsoleKind.SERIAL,
           session: str | None = None) -> str:  # fmt: skip
    with session_scope(engine) as s:
        vm = s.get(Vm, vm_id)
        assert vm is not None
        return tickets.issue(s, vm, who, kind, 60, session).ticket


def _redeem(engine: Engine, ticket: str, vm_id: int, kind: ConsoleKind = ConsoleKind.SERIAL,
            who: str | None = ANN, session: str | None = None) -> tickets.Grant:  # fmt: skip
    with session_scope(engine) as s:
        return tickets.redeem(s, ticket, vm_id, kind, who, session)


def _used(engine: Engine, ticket: str) -> bool:
    with session_scope(engine) as s:
        row = s.query(ConsoleTicket).filter_by(selector=ticket.split(".", maxsplit=1)[0]).one()
        return row.used_at is not None


def test_a_ticket_opens_one_console_once_for_its_user(db_engine: Engine) -> None:
    up, down = _setup(db_engine)
    ticket = _issue(db_engine, up)
    for wrong in ("", "nodot", ticket.split(".")[0] + ".x", "a" * 300, ticket + "x"):
        with pytest.raises(TicketRefused, match="unknown ticket"):
            _redeem(db_engine, wrong, up)
    for other in (BEN, None):  # another user, or nobody known
        with pytest.raises(TicketRefused, match="another user"):
            _redeem(db_engine, ticket, up, who=other)
    with pytest.raises(TicketRefused, match="another console"):
        _redeem(db_engine, ticket, up, ConsoleKind.VNC)
    with pytest.raises(TicketRefused, match="another console"):
        _redeem(db_engine, ticket, down)
    assert not _used(db_engine, ticket)  # none of those used it up
    grant = _redeem(db_engine, ticket, up)
    assert (grant.principal, grant.vm_id, grant.kind) == (ANN, up, ConsoleKind.SERIAL)
    with pytest.raises(TicketRefused, match="used already"):
        _redeem(db_engine, ticket, up)
    late = _issue(db_engine, up)
    with session_scope(db_engine) as s:
        s.execute(update(ConsoleTicket).where(ConsoleTicket.selector == late.split(".")[0])
                  .values(expires_at=utcnow() - timedelta(seconds=1)))  # fmt: skip
    with pytest.raises(TicketRefused, match="expired"):
        _redeem(db_engine, late, up)


def test_a_ticket_from_a_web_session_is_good_in_that_session_only(db_engine: Engine) -> None:
    up, _ = _setup(db_engine)
    mine, other = tickets.session_key("csrf-of-this-tab"), tickets.session_key("csrf-of-another-sign-in")
    ticket = _issue(db_engine, up, session=mine)
    for wrong in (None, other):  # over the API (no session), or the same user signed in elsewhere
        with pytest.raises(TicketRefused, match="another sign-in"):
            _redeem(db_engine, ticket, up, session=wrong)
    assert _redeem(db_engine, ticket, up, session=mine).principal == ANN
    # An API ticket (no session) is good for its user over the API and from their browser alike.
    assert _redeem(db_engine, _issue(db_engine, up), up, session=mine).principal == ANN


def test_who_may_have_a_ticket_and_when(db_engine: Engine) -> None:
    up, down = _setup(db_engine)
    with pytest.raises(Forbidden, match="may not open the console of VM up"):
        _issue(db_engine, up, MO)
    with pytest.raises(Conflict, match="stopped"):
        _issue(db_engine, down)
    with pytest.raises(UsageError):
        tickets.parse_kind("spice")
    assert tickets.parse_kind(None) is ConsoleKind.VNC
    # A right lost between the ticket and the connection: refused at the door, and an open console is told.
    ticket = _issue(db_engine, up)
    grant = _redeem(db_engine, _issue(db_engine, up), up)
    with session_scope(db_engine) as s:
        assert tickets.still_open(s, grant) is None
        s.execute(delete(Permission).where(Permission.user_id == s.query(User.id).filter_by(principal=ANN)
                                           .scalar_subquery()))  # fmt: skip
    with pytest.raises(Forbidden):
        _redeem(db_engine, ticket, up)
    with session_scope(db_engine) as s:
        assert "may no longer control" in (tickets.still_open(s, grant) or "")


def test_an_open_console_must_close_when_the_vm_stops_or_moves(db_engine: Engine) -> None:
    up, _ = _setup(db_engine)
    grant = _redeem(db_engine, _issue(db_engine, up), up)
    with session_scope(db_engine) as s:
        vm = s.get(Vm, up)
        assert vm is not None
        vm.host_id = None
        assert "moved" in (tickets.still_open(s, grant) or "")
        vm.state = VmState.STOPPED
        assert "stopped" in (tickets.still_open(s, grant) or "")


def _race(engine: Engine, ticket: str, vm_id: int, n: int) -> list[str]:
    """`n` threads redeem one ticket at the same moment: what each got ("won", or the refusal's text)."""
    start = threading.Barrier(n)
    out: list[str] = []

    def attempt() -> None:
        start.wait()
        try:
            _redeem(engine, ticket, vm_id)
            out.append("won")
        except TicketRefused as exc:
            out.append(exc.message)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_two_connections_racing_with_one_ticket_one_wins(db_engine: Engine) -> None:
    up, _ = _setup(db_engine)
    for _ in range(3):
        results = _race(db_engine, _issue(db_engine, up), up, 4)
        assert len(results) == 4 and results.count("won") == 1, results
        assert all("used already" in r for r in results if r != "won")


def test_the_vnc_key_mirrors_each_byte() -> None:
    # VNC's DES key quirk: "a" is 0x61 = 01100001, mirrored 10000110 = 0x86; at most 8 bytes, zero-padded.
    assert rfb._des_key("a") == bytes([0x86, 0, 0, 0, 0, 0, 0, 0])
    assert rfb._des_key("abcdefghij") == rfb._des_key("abcdefgh")
    response = rfb.vnc_response("secret", bytes(range(16)))
    assert len(response) == 16 and response != rfb.vnc_response("secreT", bytes(range(16)))


LIVE = """<domain><devices><graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.11'>
<listen type='address' address='127.0.0.11'/></graphics></devices></domain>"""


def test_the_live_vnc_device_gets_a_password_that_expires() -> None:
    assert vnc_display(LIVE) == vnc_display(LIVE.replace("5901", "5901")) and vnc_display(LIVE).port == 5901
    until = datetime(2026, 11, 30, 10, 0, 5, tzinfo=UTC)
    device = ET.fromstring(password_xml(LIVE, "pw123456", until))
    assert device.tag == "graphics" and device.get("passwd") == "pw123456"
    assert device.get("passwdValidTo") == "2026-11-30T10:00:05" and device.get("port") == "5901"
    with pytest.raises(ConsoleUnavailable, match="no VNC display"):
        vnc_display("<domain><devices/></domain>")
    with pytest.raises(ConsoleUnavailable, match="no port yet"):
        vnc_display(LIVE.replace("5901", "-1"))


def test_guests_get_a_random_vnc_password_and_the_nodes_listen_address() -> None:
    def graphics() -> ET.Element:
        vm = Vm(uuid=str(uuid.uuid4()), name="web", vcpus=1, memory_mib=64, boot_device=BootDevice.HD)
        found = ET.fromstring(domainxml.build(vm, domainxml.HostCaps(frozenset({"qemu"}), False))).find(
            "devices/graphics")  # fmt: skip
        assert found is not None
        return found

    one, two = graphics(), graphics()
    assert one.get("type") == "vnc" and one.get("autoport") == "yes"
    assert len(one.get("passwd") or "") == 8 and one.get("passwd") != two.get("passwd")
    listen = one.find("listen")
    # No address of its own: qemu.conf's vnc_listen on whichever node runs it (the node agent sets it).
    assert listen is not None and listen.get("type") == "address" and listen.get("address") is None


def test_the_node_agent_makes_vnc_reachable_and_keeps_the_admins_qemu_conf(tmp_path: Path) -> None:
    paths = libvirtd.LibvirtdPaths().under(tmp_path)
    paths.qemu_conf.parent.mkdir(parents=True)
    paths.qemu_conf.write_text('# the distro\'s comments\nuser = "root"\nvnc_listen = "127.0.0.1"\n')
    keytab = tmp_path / "krb5.tab"
    assert libvirtd.configure(paths, keytab, ["drover"]) is True
    text = paths.qemu_conf.read_text()
    assert 'user = "root"' in text and 'vnc_listen = "0.0.0.0"' in text and "127.0.0.1" not in text
    assert libvirtd.configured(paths, keytab, ["drover"])
    assert libvirtd.configure(paths, keytab, ["drover"]) is False  # unchanged: no restart
    paths.qemu_conf.write_text(text.replace("0.0.0.0", "127.0.0.1"))
    assert not libvirtd.configured(paths, keytab, ["drover"])


def test_a_ticket_row_keeps_only_a_hash(db_engine: Engine) -> None:
    up, _ = _setup(db_engine)
    ticket = _issue(db_engine, up)
    selector, secret = ticket.split(".")
    with session_scope(db_engine) as s:
        row = s.query(ConsoleTicket).filter_by(selector=selector).one()
        assert secret not in row.secret_hash and len(row.secret_hash) == 64
        assert row.principal == ANN and row.kind is ConsoleKind.SERIAL
        assert timedelta(seconds=59) <= row.expires_at - row.created_at <= timedelta(seconds=61)
