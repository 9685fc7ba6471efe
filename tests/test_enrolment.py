"""Identify and heartbeat against the real node app and the lab realm: accepted, pending, every refusal.

The node app runs in this process under a real uvicorn with the appliance's TLS certificate, on a real
SQLite database and the lab KDC's kadmin; issued keytabs are checked with `klist -k` and `kinit -k`.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from appliance import enrolment, hosts, pki
from appliance.api.nodes import create_node_app
from appliance.config import Config, load
from appliance.db.base import utcnow
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import EnrolmentToken, Event, Host, HostNic, HostState
from appliance.db.tokens import mint
from appliance.kerberos.ticket import kinit_keytab
from appliance.serving import Group, bind, listener
from nodeagent import wire
from tests.lab.kdc import APPLIANCE_HOST, LabKdc

pytestmark = pytest.mark.lab

UUID = "8f2a0c4e-1b7d-4e55-9a31-0c2d5e6f7a8b"
OTHER = "11111111-2222-4333-8444-555555555555"
MAC = "52:54:00:12:34:56"


def facts(uuid: str = UUID, fqdn: str = "enrol1.example.test", nics: tuple[wire.Nic, ...] | None = None) -> wire.Facts:
    # Each machine its own boot MAC (MACs are unique among enrolled hosts): this module's host has MAC.
    mac = MAC if uuid == UUID else "52:54:00:" + ":".join(uuid[i : i + 2] for i in (0, 2, 4))
    nics = nics if nics is not None else (wire.Nic("ens3", mac, 1000, ("10.0.2.15/24",), True),)
    return wire.Facts(
        uuid=uuid,
        hostname=fqdn.split(".", maxsplit=1)[0],
        fqdn=fqdn,
        arch="x86_64",
        kernel="6.1.0-28-amd64",
        memory_bytes=2 << 30,
        cpu=wire.Cpu("QEMU Virtual CPU", 4, 2, 1, ("fpu", "vmx", "sse2")),
        nics=nics,
        disks=(wire.Disk("vda", 10 << 30, "virtio", "S1"),),
        boot_mac=next((n.mac for n in nics if n.boot), ""),
        agent_version="0.1.0",
    )


def lab_config(kdc: LabKdc, db: Path, **extra: str) -> Config:
    spec = kdc.realm.spec
    env = {
        "DROVER_STATE_DIR": str(kdc.root),
        "DROVER_KERBEROS_REALM": spec.realm,
        "DROVER_KERBEROS_HOSTNAME": APPLIANCE_HOST,
        "DROVER_KERBEROS_KDC_PORT": str(spec.kdc_port),
        "DROVER_KERBEROS_KADMIN_PORT": str(spec.kadmin_port),
        "DROVER_DATABASE_URL": f"sqlite:///{db}",
        **extra,
    }
    return load(env=env)


@pytest.fixture
def engine(tmp_path: Path, sqlite_migrated_file: Path) -> Iterator[Engine]:
    path = tmp_path / "drover.db"
    shutil.copyfile(sqlite_migrated_file, path)
    db = make_engine(f"sqlite:///{path}")
    yield db
    db.dispose()


@pytest.fixture
def node_api(kdc: LabKdc, engine: Engine) -> Iterator[httpx.Client]:
    cfg = lab_config(kdc, Path(str(engine.url.database)), DROVER_NODES_EXTRA_NAMES="127.0.0.1")
    certs = pki.ensure(cfg)
    sock = bind("127.0.0.1", 0, "test")
    app = create_node_app(cfg, realm=kdc.realm, engine=engine)
    group = Group([listener("nodes", app, sock, certfile=str(certs.server_cert), keyfile=str(certs.server_key))])
    thread = threading.Thread(target=group.run)
    thread.start()
    deadline = time.monotonic() + 10
    while not group.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    port = sock.getsockname()[1]
    # The client trusts only the appliance's CA, as a node that pinned its fingerprint does.
    pinned = ssl.create_default_context(cafile=certs.ca_cert)
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=pinned, trust_env=False) as client:
        yield client
    group.stop()
    thread.join(15)


def identify(client: httpx.Client, token: str, f: wire.Facts | None = None) -> Any:
    return client.post("/node/v1/identify", content=wire.encode(wire.IdentifyRequest(token, f or facts())))


def token(engine: Engine, **kw: Any) -> str:
    with session_scope(engine) as s:
        return mint(s, **kw).token


def snapshot(engine: Engine) -> tuple[object, ...]:
    with session_scope(engine) as s:
        counts = tuple(s.scalar(select(func.count()).select_from(m)) for m in (Host, HostNic, Event))
        used = tuple(s.scalars(select(EnrolmentToken.used_at).order_by(EnrolmentToken.id)).all())
        states = tuple(s.execute(select(Host.uuid, Host.state, Host.approved_at, Host.agent_token_hash)).all())
    return (*counts, used, states)


def test_identify_with_a_token_enrols_and_the_keytab_works(node_api: httpx.Client, engine: Engine, kdc: LabKdc,
                                                           tmp_path: Path) -> None:  # fmt: skip
    r = identify(node_api, token(engine))
    assert r.status_code == 200, r.text
    answer = wire.decode(wire.IdentifyResponse, r.content)
    assert answer.status is wire.IdentifyStatus.ACCEPTED and answer.agent_token
    creds = answer.credentials
    assert creds is not None
    assert creds.principal == f"libvirt/enrol1.example.test@{kdc.realm.name}"
    assert creds.allowed_users == ("drover",)
    # The node is told the KDC at the name it reached us by, with the realm's KDC port.
    assert f"kdc = 127.0.0.1:{kdc.realm.spec.kdc_port}" in creds.krb5_conf
    keytab = tmp_path / "node.keytab"
    keytab.write_bytes(base64.b64decode(creds.keytab_b64))
    listed = subprocess.run(["klist", "-k", str(keytab)], capture_output=True, text=True, check=True).stdout
    assert creds.principal in listed
    kinit_keytab(creds.principal, keytab, tmp_path / "cc", kdc.env)  # raises if the key is not the KDC's
    with session_scope(engine) as s:
        host = hosts.by_uuid(s, UUID)
        assert host is not None
        assert (host.state, host.hostname, host.cpu_count, host.cpu_cores, host.memory_mib) == (
            HostState.PENDING, "enrol1.example.test", 4, 2, 2048)  # fmt: skip
        assert "vmx" in host.cpu_flags and host.approved_at is not None and host.credentials_issued_at is not None
        assert [(n.mac, n.is_boot) for n in host.nics] == [(MAC, True)]
        assert [d.name for d in host.disks] == ["vda"]
        assert s.scalar(select(func.count()).select_from(Event).where(Event.kind == "host.identified")) == 1


def test_reboot_is_the_same_host_with_nics_reconciled(node_api: httpx.Client, engine: Engine) -> None:
    first = wire.decode(wire.IdentifyResponse, identify(node_api, token(engine)).content)
    nics = (
        wire.Nic("ens3", MAC, 10000, ("10.0.2.16/24",), True),  # updated: speed and address
        wire.Nic("ens4", "52:54:00:aa:bb:cc", 1000),  # added; the old second NIC is gone
    )
    # Enrolled: only a token bound to this machine re-enrols it (the boot service mints those for its reboot).
    unbound = identify(node_api, token(engine), facts(nics=nics))
    assert unbound.status_code == 401, unbound.text
    bound = token(engine, host_uuid=UUID, mac=MAC)
    again = wire.decode(wire.IdentifyResponse, identify(node_api, bound, facts(nics=nics)).content)
    assert again.host_id == first.host_id and again.agent_token != first.agent_token
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Host)) == 1
        host = hosts.by_uuid(s, UUID)
        assert host is not None
        assert sorted((n.name, n.mac, n.speed_mbps) for n in host.nics) == [
            ("ens3", MAC, 10000), ("ens4", "52:54:00:aa:bb:cc", 1000)]  # fmt: skip
        last = s.scalars(select(Event).where(Event.kind == "host.identified").order_by(Event.id.desc())).first()
        assert last is not None and "added 52:54:00:aa:bb:cc; updated 52:54:00:12:34:56" in last.message


def test_no_token_is_pending_then_approval_hands_credentials_out_once(node_api: httpx.Client, engine: Engine) -> None:
    r = identify(node_api, "")
    assert r.status_code == 202, r.text
    answer = wire.decode(wire.IdentifyResponse, r.content)
    assert answer.status is wire.IdentifyStatus.PENDING and answer.credentials is None

    def beat(agent_token: str) -> Any:
        return node_api.post("/node/v1/heartbeat", content=wire.encode(wire.Heartbeat(UUID, agent_token=agent_token)))

    pending = wire.decode(wire.HeartbeatResponse, beat(answer.agent_token).content)
    assert pending.status is wire.IdentifyStatus.PENDING and pending.credentials is None
    with session_scope(engine) as s:
        host = hosts.by_uuid(s, UUID)
        assert host is not None
        enrolment.approve(s, host, "admin@LAB", heartbeat_seconds=10)
    # Knowing the UUID is not enough to collect the keytab: the boot's agent token is.
    forged = beat("not-the-agent-token")
    assert forged.status_code == 401, forged.text
    got = wire.decode(wire.HeartbeatResponse, beat(answer.agent_token).content)
    assert got.status is wire.IdentifyStatus.ACCEPTED and got.credentials is not None
    once = wire.decode(wire.HeartbeatResponse, beat(answer.agent_token).content)
    assert once.status is wire.IdentifyStatus.ACCEPTED and once.credentials is None
    # The port its libvirtd listens on comes with the authenticated heartbeat: recorded, a change followed (with
    # an event), an out-of-range one refused with nothing changed, 0 ("not said") leaves it.
    def port_beat(port: int) -> Any:
        body = wire.to_dict(wire.Heartbeat(UUID, agent_token=answer.agent_token))
        return node_api.post("/node/v1/heartbeat", content=json.dumps({**body, "libvirt_port": port}).encode())

    def port_now() -> int | None:
        with session_scope(engine) as s:
            return s.scalars(select(Host.libvirt_port).where(Host.uuid == UUID)).one()

    assert port_beat(16509).status_code == 200 and port_now() == 16509
    assert port_beat(16600).status_code == 200 and port_now() == 16600
    for bad in (70000, -1):
        refused = port_beat(bad)
        assert refused.status_code == 400 and "libvirt_port: " in refused.json()["error"], refused.text
    assert port_beat(0).status_code == 200 and port_now() == 16600
    with session_scope(engine) as s:
        moved = s.scalars(select(Event.message).where(Event.kind == "host.libvirt_port")).all()
    assert moved == ["libvirtd on port 16600 (was 16509), as its heartbeat says"], moved
    # Enrolled now: identifying again without a token is refused and changes nothing.
    before = snapshot(engine)
    r = identify(node_api, "")
    assert r.status_code == 409 and "needs an enrolment token" in r.json()["error"]
    assert snapshot(engine) == before


def _refused(node_api: httpx.Client, engine: Engine, body: bytes, status: int, words: str) -> None:
    before = snapshot(engine)
    r = node_api.post("/node/v1/identify", content=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.json()
    assert snapshot(engine) == before


def test_refused_tokens_change_nothing(node_api: httpx.Client, engine: Engine) -> None:
    used = token(engine)
    assert identify(node_api, used).status_code == 200
    req = wire.IdentifyRequest
    # Another machine: its own name and NIC (the enrolled host's would be refused before any token is read).
    other = facts(uuid=OTHER, fqdn="x.example.test", nics=(wire.Nic("ens3", "52:54:00:00:00:11", 1000, (), True),))
    _refused(node_api, engine, wire.encode(req(used, facts())), 401, "enrolment token refused")
    with session_scope(engine) as s:
        expired = mint(s, ttl=timedelta(seconds=1), now=utcnow() - timedelta(minutes=5)).token
    _refused(node_api, engine, wire.encode(req(expired, other)), 401, "enrolment token refused")
    bound = token(engine, host_uuid=UUID)
    # A forged UUID presenting the token bound to another machine.
    _refused(node_api, engine, wire.encode(req(bound, other)), 401, "refused")
    mac_bound = token(engine, mac="52:54:00:00:00:99")
    _refused(node_api, engine, wire.encode(req(mac_bound, other)), 401, "refused")
    _refused(node_api, engine, wire.encode(req("drv1.nope.nope", other)), 401, "refused")


def test_bad_bodies_are_400_naming_the_field(node_api: httpx.Client, engine: Engine) -> None:
    good = wire.to_dict(wire.IdentifyRequest("", facts(uuid=OTHER)))
    _refused(node_api, engine, b"{not json", 400, "not JSON")
    _refused(node_api, engine, b"x" * (300 * 1024), 400, "larger than")
    _refused(node_api, engine, json.dumps({**good, "extra": 1}).encode(), 400, "extra: unknown field")
    bad_mac = json.loads(json.dumps(good))
    bad_mac["facts"]["nics"][0]["mac"] = "zz"
    _refused(node_api, engine, json.dumps(bad_mac).encode(), 400, "facts.nics[0].mac")
    no_uuid = json.loads(json.dumps(good))
    del no_uuid["facts"]["uuid"]
    _refused(node_api, engine, json.dumps(no_uuid).encode(), 400, "facts.uuid: missing")
    short_name = json.loads(json.dumps(good))
    short_name["facts"]["fqdn"] = "bad name"
    _refused(node_api, engine, json.dumps({**short_name, "token": token(engine)}).encode(), 400, "facts.fqdn")
    r = node_api.post("/node/v1/heartbeat", content=b'{"uuid": 5}')
    assert r.status_code == 400 and "uuid: expected a string" in r.json()["error"]
