"""Attacks on a real `drover serve` and lab pieces: the boot file server, mDNS, keytabs, the web UI's session.

- Path traversal against /boot/images (encoded, double-encoded, absolute, backslashed, raw `..` on the wire)
  and symlinks put into the image directory that lead out of it: only manifest names, inside the image.
- An unauthenticated `_libvirt._tcp` announcement (python-zeroconf, as anyone on the segment can send) naming
  an enrolled host's FQDN and DMI UUID with another address and port: the appliance's session to the host
  stays where it is, nothing connects to the announced port, the host stays available.
- The keytab the REAL node agent wrote (tests/lab/agent_node.py) is 0600 and neither it nor any key in it
  appears in serve.log, the agent's log, the events table or any REST answer about the host.
- Session fixation: a cookie the browser held before signing in (junk, or another user's valid session) is
  replaced at sign-in; the cookie's flags.
"""

from __future__ import annotations

import base64
import secrets
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from zeroconf import ServiceInfo, Zeroconf

from appliance.client import Client
from appliance.db.engine import session_scope
from appliance.db.models import Event, Host, HostState
from appliance.web.session import COOKIE, Sessions
from hostbrowser.mdns import SERVICE_TYPE
from tests.lab.agent_node import FakeNode, RestartServer, host_row, host_state, mint, wait_for
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.libvirtd import LabHosts, NodeFactory, NodeFiles, libvirtd_conf
from tests.lab.nodeagent_peer import stop
from tests.lab.rack import Lab, rack
from tests.test_boot_service import fake_image

pytestmark = pytest.mark.lab

ADMIN = "sec-boss"
FQDN = "sec7.example.test"


@pytest.fixture(scope="module")
def lab(
    kdc: LabKdc, lab_hosts: LabHosts, libvirt_nodes: NodeFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("sec")
    env = {"DROVER_NODES_HEARTBEAT_SECONDS": "1"}  # the boot image: the default <state dir>/images/current
    with rack(kdc, lab_hosts, libvirt_nodes, root / "state", {ADMIN: "admin"}, env) as lab:
        yield lab


# --- the boot file server ----------------------------------------------------------------------------------


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """One GET with `target` on the request line exactly as given (httpx would normalise the dots away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


def test_boot_file_server_serves_manifest_names_inside_the_image_only(lab: Lab, tmp_path: Path) -> None:
    image = fake_image(tmp_path / "build" / "out")
    used = lab.served.drover("boot", "use", str(image), "--verify", principal=ADMIN)
    assert used.returncode == 0, used.stdout + used.stderr
    secret = tmp_path / "build" / "secret.txt"  # fake_image's file just outside the image
    port = lab.served.boot_port
    kernel = (image / "vmlinuz").read_bytes()
    status, body = raw_get(port, "/boot/images/vmlinuz")
    assert status == 200 and body.endswith(kernel)

    # A link placed in the image directory under a name the manifest does not list: not served.
    (image / "escape").symlink_to(secret)
    (image / "etc").symlink_to("/etc")
    attempts = [
        "/boot/images/escape",
        "/boot/images/etc/passwd",
        "/boot/images/../build/secret.txt",
        "/boot/images/../../../../etc/passwd",
        "/boot/images/..%2fsecret.txt",
        "/boot/images/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/boot/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/boot/images/%252e%252e%252fsecret.txt",  # double-encoded
        "/boot/images/..%252f..%252fetc%252fpasswd",
        "/boot/images/%2fetc%2fpasswd",  # absolute
        "/boot/images//etc/passwd",
        f"/boot/images/{secret}",
        "/boot/images/..\\secret.txt",
        "/boot/images/vmlinuz/../../secret.txt",
        "/boot/images/./vmlinuz/..%2f..%2fsecret.txt",
        "/boot/images/manifest.json",
        "/boot/images/%00vmlinuz",
    ]
    for target in attempts:
        status, body = raw_get(port, target)
        assert status in (400, 404), (target, status, body[:300])
        assert b"outside the image" not in body and b"root:" not in body, (target, body[:300])

    # A manifest name replaced by a link out of the image, to a file of the very size the manifest says (so
    # the size check cannot be what stops it): refused, the appliance logs why.
    planted = tmp_path / "planted"
    planted.write_bytes(b"S" * len(kernel))
    (image / "vmlinuz").unlink()
    (image / "vmlinuz").symlink_to(planted)
    status, body = raw_get(port, "/boot/images/vmlinuz")
    assert status == 404 and b"SSSS" not in body, (status, body[:300])
    assert "vmlinuz leads outside the image" in lab.served.log_text()
    # A link inside the image directory is still followed: the check is where it leads, not that it is one.
    (image / "vmlinuz").unlink()
    (image / "kernel.real").write_bytes(kernel)
    (image / "vmlinuz").symlink_to("kernel.real")
    status, body = raw_get(port, "/boot/images/vmlinuz")
    assert status == 200 and body.endswith(kernel)


# --- an enrolled node, by the real agent -------------------------------------------------------------------


@pytest.fixture(scope="module")
def enrolled(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeNode]:
    """sec7 enrolled by the real node agent; the module's tests attack around it."""
    tmp = tmp_path_factory.mktemp("sec-node")
    settings = lab.nodes.plan(FQDN, port=lab.libvirt_port)
    conf = tmp / "conf"
    (conf / "etc/libvirt").mkdir(parents=True)
    (conf / "etc/libvirt/libvirtd.conf").write_text(libvirtd_conf(settings, lab.nodes.root_for(settings)))
    files = NodeFiles(
        libvirtd_conf=conf / "etc/libvirt/libvirtd.conf",
        sasl_dir=conf / "etc/sasl2",
        keytab=conf / "etc/libvirt/krb5.tab",
        krb5_conf=conf / "etc/krb5.conf",
    )
    restarter = RestartServer(tmp / "restart.sock", lambda: lab.nodes.start(FQDN, settings=settings, files=files))
    node = FakeNode(tmp, FQDN, str(uuid.uuid4()), settings, restarter)
    node.facts_tree({"ens3": "52:54:00:5e:c0:07"})
    token, ca = mint(lab, ADMIN)
    node.cmdline(lab.served, token, ca, "01-52-54-00-5e-c0-07")
    agent = node.start_agent()
    try:
        wait_for("host available", lambda: host_state(lab.db, node.dmi_uuid) is HostState.AVAILABLE, 60, node.log)
        yield node
    finally:
        stop(agent)
        restarter.close()
        if restarter.node is not None:
            restarter.node.stop()


def keytab_keys(data: bytes) -> list[bytes]:
    """The key blocks of an MIT keytab (format 0x0502): what a leak would really give away."""
    assert data[:2] == b"\x05\x02", data[:2]
    keys, at = [], 2
    while at < len(data):
        (size,) = struct.unpack_from(">i", data, at)
        at += 4
        if size <= 0:
            at += -size
            continue
        entry, at = data[at : at + size], at + size
        (count,) = struct.unpack_from(">H", entry, 0)
        pos = 2
        for _ in range(count + 1):  # the realm, then each component
            (n,) = struct.unpack_from(">H", entry, pos)
            pos += 2 + n
        pos += 4 + 4 + 1 + 2  # name type, timestamp, kvno8, enctype
        (n,) = struct.unpack_from(">H", entry, pos)
        keys.append(entry[pos + 2 : pos + 2 + n])
    return keys


def encodings(blob: bytes) -> set[str]:
    std = base64.b64encode(blob).decode()
    return {std, std.rstrip("="), base64.urlsafe_b64encode(blob).decode().rstrip("="), blob.hex(), blob.hex().upper()}


def test_the_keytab_is_0600_and_never_in_a_log_or_an_api_answer(
    lab: Lab, enrolled: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = enrolled.keytab.read_bytes()
    assert enrolled.keytab.stat().st_mode & 0o777 == 0o600
    keys = keytab_keys(data)
    assert keys and all(len(k) >= 16 for k in keys), [len(k) for k in keys]
    needles = encodings(data) | {e for k in keys for e in encodings(k)}

    row = host_row(lab.db, enrolled.dmi_uuid)
    assert row is not None
    monkeypatch.setenv("KRB5_CONFIG", str(lab.kdc.krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", lab.kdc.ticket(ADMIN)["KRB5CCNAME"])
    answers: dict[str, str] = {}
    with Client(lab.served.local_url, service_host=APPLIANCE_HOST) as api:
        for path in ("/api/v1/hosts", f"/api/v1/hosts/{row[0]}", f"/api/v1/hosts/{FQDN}", "/api/v1/tasks",
                     "/api/v1/enrolment/windows"):  # fmt: skip
            answers[path] = str(api.get(path))
    assert FQDN in answers["/api/v1/hosts"]  # the answers are about this host
    for args in (("host", "show", FQDN), ("host", "list")):
        shown = lab.served.drover(*args, principal=ADMIN)
        assert shown.returncode == 0, shown.stderr
        answers[" ".join(args)] = shown.stdout
    with session_scope(lab.db) as s:
        answers["events"] = "\n".join(s.scalars(select(Event.message)))
    answers["serve.log"] = lab.served.log_text()
    answers["agent log"] = enrolled.log.read_text(errors="replace")
    assert "keytab" in answers["agent log"] or "identified" in answers["agent log"], answers["agent log"][-2000:]
    for where, text in answers.items():
        leaked = [n[:12] for n in needles if n in text]
        assert leaked == [], f"key material in {where}: {leaked}"
    print(f"keytab {len(data)} bytes, {len(keys)} keys: none of {len(needles)} encodings in {', '.join(answers)}")


# --- mDNS --------------------------------------------------------------------------------------------------


class Listener:
    """A TCP port an attacker holds, counting who connects to it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def announce(zc: Zeroconf, instance: str, fqdn: str, dmi_uuid: str, address: str, port: int) -> ServiceInfo:
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{instance}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(address)],
        port=port,
        properties={"fqdn": fqdn, "uuid": dmi_uuid},
        server=f"{instance}.local.",
    )
    zc.register_service(info, allow_name_change=True)
    return info


def test_an_unauthenticated_announcement_cannot_move_an_enrolled_hosts_connection(lab: Lab, enrolled: FakeNode) -> None:
    def port_of() -> int | None:
        with session_scope(lab.db) as s:
            return s.scalars(select(Host.libvirt_port).where(Host.uuid == enrolled.dmi_uuid)).one()

    before = port_of()
    shown = lab.served.drover("host", "show", FQDN, principal=ADMIN).stdout
    uri_line = next(line for line in shown.splitlines() if line.startswith("libvirt_uri:"))
    # On the node's own address: an unprivileged process on the node, say, listening on a port of its own.
    trap = Listener(enrolled.settings.address)
    zc = Zeroconf(interfaces=["127.0.0.1"])
    tag = secrets.token_hex(3)
    try:
        # The attacker's announcement: the enrolled host's name and UUID, its own address and port.
        announce(zc, f"evil-{tag}", FQDN, enrolled.dmi_uuid, "127.0.0.99", trap.port)
        # Handled once the appliance logs it, whatever it decided: a line naming the host and the trap's port.
        wait_for(
            "the announcement handled",
            lambda: any(
                f"{FQDN} " in line and "announced" in line and f"{trap.port}" in line
                for line in lab.served.log_text().splitlines()
            ),
            30,
        )
        # And one with the host's name but not its UUID: no host matches, nothing changes.
        announce(zc, f"evil2-{tag}", FQDN, str(uuid.uuid4()), "127.0.0.99", trap.port + 1 if trap.port < 65535 else 1)
        wait_for("the stranger ignored", lambda: f"ignoring announcements of {FQDN}" in lab.served.log_text(), 30)
        time.sleep(3)  # a browser that took the bait would have reconnected by now (it reacts within a second)
        assert trap.accepted == 0
        assert port_of() == before
        assert host_state(lab.db, enrolled.dmi_uuid) is HostState.AVAILABLE
        again = lab.served.drover("host", "show", FQDN, principal=ADMIN).stdout
        assert uri_line in again.splitlines(), again
        assert f"announced port {trap.port} ignored" in lab.served.log_text()
    finally:
        zc.unregister_all_services()
        zc.close()
        trap.close()


def test_an_announcement_cannot_move_a_disconnected_hosts_reconnection(lab: Lab, enrolled: FakeNode) -> None:
    """Its session down (libvirtd stopped), the host is waiting to be reconnected: the attacker's announcement
    of another port must not send the reconnection there. The port is the one its agent's heartbeat says."""

    def port_of() -> int | None:
        with session_scope(lab.db) as s:
            return s.scalars(select(Host.libvirt_port).where(Host.uuid == enrolled.dmi_uuid)).one()

    # The real agent says its port in every heartbeat: recorded, not left to the default or to mDNS.
    wait_for("the heartbeat's port recorded", lambda: port_of() == enrolled.settings.port, 30)
    node = enrolled.restarter.node
    assert node is not None
    trap = Listener(enrolled.settings.address)
    zc = Zeroconf(interfaces=["127.0.0.1"])
    tag = secrets.token_hex(3)
    try:
        node.stop_daemon()
        wait_for("host unavailable", lambda: host_state(lab.db, enrolled.dmi_uuid) is HostState.UNAVAILABLE, 60)
        announce(zc, f"evil3-{tag}", FQDN, enrolled.dmi_uuid, "127.0.0.99", trap.port)
        wait_for("the announcement refused", lambda: f"announced port {trap.port} ignored, its heartbeat says port "
                 f"{enrolled.settings.port}" in lab.served.log_text(), 30)  # fmt: skip
        time.sleep(3)  # the hint had the browser try now: on the host's own port, not the trap
        assert trap.accepted == 0 and port_of() == enrolled.settings.port
    finally:
        zc.unregister_all_services()
        zc.close()
        trap.close()
        node.restart()
    wait_for("host available again", lambda: host_state(lab.db, enrolled.dmi_uuid) is HostState.AVAILABLE, 90)
    assert trap.accepted == 0 and port_of() == enrolled.settings.port


# --- the web UI's session ----------------------------------------------------------------------------------


def sign_in(lab: Lab, user: str, password: str, cookie: str | None) -> httpx.Response:
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie is not None else {}
    return httpx.post(
        f"{lab.served.local_url}/ui/login",
        data={"user": user, "password": password, "next": "/ui/vms"},
        headers=headers,
        follow_redirects=False,
        trust_env=False,
        timeout=30,
    )


def set_cookie(response: httpx.Response) -> tuple[str, dict[str, str]]:
    (header,) = [v for k, v in response.headers.multi_items() if k.lower() == "set-cookie"]
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    morsel = jar[COOKIE]
    flags = {k: str(v) for k, v in morsel.items() if v}
    flags["raw"] = header
    return morsel.value, flags


def whoami(lab: Lab, cookie: str) -> int:
    r = httpx.get(f"{lab.served.local_url}/ui/vms", headers={"Cookie": f"{COOKIE}={cookie}"}, trust_env=False,
                  follow_redirects=False, timeout=30)  # fmt: skip
    return r.status_code


def test_sign_in_replaces_any_earlier_session_cookie_and_sets_strict_flags(lab: Lab) -> None:
    victim, mallory = f"sec-v-{secrets.token_hex(3)}", f"sec-m-{secrets.token_hex(3)}"
    passwords = {victim: "Pw-" + secrets.token_hex(8), mallory: "Pw-" + secrets.token_hex(8)}
    for name, password in passwords.items():
        lab.kdc.realm.kadmin().add(name, password=password)

    # The login page hands out no session before sign-in.
    page = httpx.get(f"{lab.served.local_url}/ui/login", trust_env=False, timeout=30)
    assert page.status_code == 200 and "set-cookie" not in page.headers

    # Mallory signs in, and plants her cookie in the victim's browser; or the browser carries junk.
    mine = sign_in(lab, mallory, passwords[mallory], None)
    assert mine.status_code == 303, mine.text
    planted, _ = set_cookie(mine)
    assert whoami(lab, planted) == 200
    for before in (planted, "attacker-chosen-value", planted + "x"):
        r = sign_in(lab, victim, passwords[victim], before)
        assert r.status_code == 303, r.text
        after, flags = set_cookie(r)
        assert after != before and before not in flags["raw"]
        # The cookie is only a random id: the session it names (in the database) is the victim's own, new one.
        assert victim not in after and mallory not in after
        named = Sessions(lab.db).read(after)
        assert named is not None and named.principal.startswith(victim + "@"), named
        assert flags["httponly"] and flags["samesite"].lower() == "strict" and flags["path"] == "/ui/", flags
        assert 0 < int(flags["max-age"]) <= 8 * 3600, flags
        # Loopback only here: the Secure flag is left off for plain-HTTP loopback (tests, the demo) and
        # set whenever the appliance listens elsewhere (appliance.web.app: secure_cookie).
        assert "secure" not in flags, flags
        assert whoami(lab, after) == 200
    # A refused sign-in sets nothing, whatever cookie came with it.
    refused = sign_in(lab, victim, "wrong-" + secrets.token_hex(4), planted)
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    # Mallory's planted cookie, copied before she signed out, dies with her sign-out (the session is server-side).
    assert whoami(lab, planted) == 200
    csrf = Sessions(lab.db).read(planted)
    assert csrf is not None
    out = httpx.post(f"{lab.served.local_url}/ui/logout", headers={"Cookie": f"{COOKIE}={planted}",
                     "X-CSRF-Token": csrf.csrf}, trust_env=False, timeout=30)  # fmt: skip
    assert out.status_code == 204
    assert whoami(lab, planted) == 303 and whoami(lab, after) == 200
