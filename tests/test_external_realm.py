"""External Kerberos mode end to end, against a realm served the way a site serves it (tests/lab/kdc.py's
start_site_realm): krb5kdc and kadmind as their own processes, a kadm5.acl giving drover/admin only
`adci` on libvirt/*, and the appliance holding that principal's keytab and nothing of the KDC's.

`drover serve` in external mode checks the realm at start; `drover realm status` says what is wrong and
how to fix it; a node agent enrols (its keytab made through the remote kadmind), the host browser reaches
its libvirtd over GSSAPI; `drover host remove` deletes the principal; an ACL that refuses an operation
gives a clear error and leaves nothing half-done. The README's "existing realm" section is these steps.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.config import KerberosMode
from appliance.db.engine import session_scope
from appliance.db.models import EnrolmentToken, HostState
from appliance.errors import KerberosError
from appliance.kerberos.kadmin import Kadmin
from appliance.kerberos.realm import Realm, RealmFiles
from tests.lab.agent_node import FakeNode, host_row, host_state, mint, wait_for
from tests.lab.appliance import DROVER, ROOT, start_appliance
from tests.lab.kdc import SITE_ADMIN, SiteRealm, external_state, start_site_realm
from tests.lab.libvirtd import LabHosts, NodeFactory, client_env, virsh
from tests.lab.nodeagent_peer import read_state, stop
from tests.lab.rack import Lab, rack

pytestmark = pytest.mark.lab

ADMIN = "site-boss"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteRealm]:
    realm = start_site_realm(tmp_path_factory.mktemp("site-realm"))
    yield realm
    realm.stop()


@pytest.fixture(scope="module")
def lab(
    site: SiteRealm, lab_hosts: LabHosts, libvirt_nodes: NodeFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    state = tmp_path_factory.mktemp("external-appliance")
    settings = external_state(site, state)
    extra = {"DROVER_NODES_HEARTBEAT_SECONDS": "1"}
    with rack(site.kdc, lab_hosts, libvirt_nodes, state, {ADMIN: "admin"}, extra, settings=settings) as lab:
        yield lab


@pytest.fixture
def acl(site: SiteRealm) -> Iterator[Callable[[str], None]]:
    """Narrow drover/admin's kadm5.acl line for one test; the full `adci` comes back afterwards."""
    yield site.acl
    site.acl()


def realm_status(lab: Lab, **settings: str) -> subprocess.CompletedProcess[str]:
    """`drover realm status` as the appliance's admin runs it on the appliance (local config, no ticket)."""
    env = {**lab.served.cli_env(None), **settings}
    return subprocess.run([*DROVER, "realm", "status"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def check_line(out: str, name: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln[5:].startswith(name + " ")]
    return line


def test_serve_checked_the_realm_and_status_says_it_is_in_order(lab: Lab, site: SiteRealm) -> None:
    assert f"realm {site.realm} checked" in lab.served.log_text()
    # The appliance has the realm's client config and keytabs, and no KDC database, stash or kdc.conf.
    realm_dir = lab.served.state_dir / "realm"
    assert sorted(p.name for p in realm_dir.iterdir()) == ["appliance.keytab", "http.keytab", "krb5.conf"]
    out = realm_status(lab)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("krb5.conf", "kdc", "kadmind", "admin keytab", "admin rights", "HTTP keytab"):
        assert check_line(out.stdout, name).startswith("ok   "), out.stdout
    assert f"{site.realm} (external)" in out.stdout
    assert not site.exists("libvirt/drover-realm-check.invalid")  # the rights probe cleans up
    # The same checks run by the server, asked through the API by an admin; refused to anyone else.
    remote = lab.served.drover("realm", "check", principal=ADMIN)
    assert remote.returncode == 0, remote.stdout + remote.stderr
    assert f"realm:      {site.realm} (external), checked by the appliance" in remote.stdout
    assert check_line(remote.stdout, "admin rights").startswith("ok   "), remote.stdout
    stranger = lab.served.drover("realm", "check", principal="stranger")
    assert stranger.returncode == 9 and "may not check the realm" in stranger.stderr, stranger.stderr


def test_status_names_what_is_wrong_and_how_to_fix_it(lab: Lab, site: SiteRealm, acl: Callable[[str], None],
                                                       tmp_path: Path) -> None:  # fmt: skip
    # A keytab for the wrong principal.
    wrong = site.export("someone-else", tmp_path / "wrong.keytab")
    out = realm_status(lab, DROVER_KERBEROS_ADMIN_KEYTAB=str(wrong))
    assert out.returncode == 1
    line = check_line(out.stdout, "admin keytab")
    assert line.startswith("FAIL") and f"holds keys for someone-else@{site.realm}, not {SITE_ADMIN}@" in line
    assert f"fix: on the KDC: kadmin.local -q 'ktadd -norandkey -k FILE {SITE_ADMIN}@{site.realm}'" in out.stdout

    # An ACL that refuses an operation drover needs: no 'c', so no fresh key can be extracted.
    acl("adi")
    out = realm_status(lab)
    assert out.returncode == 1
    line = check_line(out.stdout, "admin rights")
    assert line.startswith("FAIL") and "lacks the 'change-password' privilege (kadm5.acl 'c')" in line, line
    assert f"fix: kadm5.acl needs the line: {SITE_ADMIN}@{site.realm}  adci  libvirt/*@{site.realm}" in out.stdout
    assert not site.exists("libvirt/drover-realm-check.invalid")  # taken back after the refusal
    remote = lab.served.drover("realm", "check", principal=ADMIN)
    assert remote.returncode == 1 and check_line(remote.stdout, "admin rights").startswith("FAIL"), remote.stdout

    # kadmind down: said so, and the rights are not even tried.
    site.stop_kadmind()
    out = realm_status(lab)
    assert out.returncode == 1
    assert check_line(out.stdout, "kadmind").startswith("FAIL") and "NOT answering" in out.stdout
    assert "fix: start kadmind on the realm's admin server" in out.stdout
    assert "not tried: fix the checks above first" in check_line(out.stdout, "admin rights")
    # (the acl fixture restarts kadmind with the full line)


def test_serve_refuses_to_start_on_a_realm_it_cannot_use(lab: Lab, site: SiteRealm, tmp_path: Path) -> None:
    wrong = site.export("someone-else", tmp_path / "wrong.keytab")
    settings = {**lab.served.settings, "DROVER_KERBEROS_ADMIN_KEYTAB": str(wrong)}
    with pytest.raises(RuntimeError) as info:
        start_appliance(site.kdc, tmp_path / "refused", settings=settings)
    text = str(info.value)
    assert "drover serve exited with 7" in text, text
    assert f"the realm {site.realm} is not ready for drover: admin keytab: {wrong} holds keys for someone-else" in text
    assert "`drover realm status` shows every check" in text


def _enrol(lab: Lab, node: FakeNode, mac: str) -> None:
    node.facts_tree({"ens3": mac})
    token, ca = mint(lab, ADMIN)
    node.cmdline(lab.served, token, ca, "01-" + mac.replace(":", "-"))


def test_enrolment_through_kadmind_then_removal_deletes_the_principal(
    lab: Lab, site: SiteRealm, make_node: Callable[[str, str], FakeNode], acl: Callable[[str], None]
) -> None:
    fqdn, dmi_uuid = "ext1.example.test", str(uuid.uuid4())
    principal = f"libvirt/{fqdn}@{site.realm}"
    node = make_node(fqdn, dmi_uuid)
    _enrol(lab, node, "52:54:00:e7:00:01")
    agent = node.start_agent()
    try:
        took = wait_for("host available", lambda: host_state(lab.db, dmi_uuid) is HostState.AVAILABLE, 60, node.log)
        print(f"external realm: agent start -> host available {took:.2f}s")
    finally:
        stop(agent)
    # The key came from kadmind (drover/admin's session), and the node's libvirtd accepts the appliance's
    # principal over GSSAPI with it: the host browser is connected (available), and so does virsh.
    assert read_state(node.state)["principal"] == principal
    kadmind_log = site.kadmind_log.read_text()
    assert f"{SITE_ADMIN}@{site.realm}" in kadmind_log and principal in kadmind_log
    assert site.exists(principal)
    assert node.restarter.node is not None
    listed = virsh(client_env(site.kdc, lab.hosts, "drover"), node.restarter.node.uri("qemu"), "uri")
    assert listed.returncode == 0, listed.stdout

    # Removal refused by an ACL without 'd': a clear error, the host and its principal both still there.
    acl("aci")
    refused = lab.served.drover("host", "remove", fqdn, principal=ADMIN)
    assert refused.returncode == 1, refused.stdout + refused.stderr  # the API's 503, with kadmind's reason
    first, hint = refused.stderr.splitlines()
    assert first == (f"drover: error: the realm refused kadmin delprinc {principal}: {SITE_ADMIN} lacks the "
                     "'delete' privilege (kadm5.acl 'd')")  # fmt: skip
    assert hint.startswith("drover: hint: give it 'd' on that principal in the realm's kadm5.acl"), hint
    assert host_row(lab.db, dmi_uuid) is not None and site.exists(principal)

    site.acl()
    removed = lab.served.drover("host", "remove", fqdn, principal=ADMIN)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert host_row(lab.db, dmi_uuid) is None and not site.exists(principal)


def test_a_refused_key_extraction_issues_nothing_and_leaves_no_principal(
    lab: Lab, site: SiteRealm, make_node: Callable[[str, str], FakeNode], acl: Callable[[str], None]
) -> None:
    fqdn, dmi_uuid = "ext2.example.test", str(uuid.uuid4())
    principal = f"libvirt/{fqdn}@{site.realm}"
    node = make_node(fqdn, dmi_uuid)
    _enrol(lab, node, "52:54:00:e7:00:02")
    acl("adi")  # may add and delete, but not extract a fresh key
    agent = node.start_agent()
    try:
        wait_for("identify refused twice", lambda: read_state(node.state).get("errors", 0) >= 2, 60, node.log)
    finally:
        stop(agent)
    error = read_state(node.state)["last_error"]
    assert "503" in error and "lacks the 'change-password' privilege (kadm5.acl 'c')" in error, error
    # Nothing half-done: no host row, the token still unused, no keytab on the node, and the principal
    # made for the attempt taken back (kadmind logged the add and the delete).
    assert host_row(lab.db, dmi_uuid) is None and not node.keytab.exists()
    with session_scope(lab.db) as s:
        used = s.scalars(select(EnrolmentToken.used_at).order_by(EnrolmentToken.id.desc()).limit(1)).one()
    assert used is None
    assert not site.exists(principal)
    assert f"took back principal {principal}" in lab.served.log_text()


def test_kadmin_session_failures_say_what_and_how(site: SiteRealm, tmp_path: Path) -> None:
    """What identify or removal would raise at run time if the realm changed under a running appliance."""
    files = RealmFiles(tmp_path / "realm")
    files.root.mkdir()
    files.krb5_conf.write_text(site.kdc.krb5_conf.read_text())
    spec = site.kdc.realm.spec

    def kadmin_as(keytab: Path) -> Kadmin:
        realm = Realm(spec, files, "appliance.example.test", KerberosMode.EXTERNAL, SITE_ADMIN, keytab)
        return realm.kadmin()

    wrong = site.export("someone-else", tmp_path / "wrong.keytab")
    with pytest.raises(KerberosError) as info:
        kadmin_as(wrong).add("libvirt/session.example.test")
    assert "the admin keytab holds no key for the admin principal" in info.value.message, info.value
    assert "export the admin principal's keys" in info.value.hint
    site.stop_kadmind()
    try:
        with pytest.raises(KerberosError) as info:
            kadmin_as(site.admin_keytab).add("libvirt/session.example.test")
        assert "failed: kadmind is not answering (or not this realm's)" in info.value.message, info.value
        assert info.value.hint.startswith("start kadmind on the realm's admin server")
    finally:
        site.restart_kadmind()
    assert not site.exists("libvirt/session.example.test")
