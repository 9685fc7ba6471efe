"""The node agent as a child process (/usr/bin/python3, distro packages) against a real HTTPS peer.

The peer is tests/lab/nodeagent_peer.py: an openssl-made CA, plain HTTP `/boot/ca.pem`, HTTPS node API.
libvirtd is "restarted" by a command (--restart=command) that records each restart: this machine has
no systemd as PID 1, so the D-Bus path (SystemdRestarter) is exercised on the real node image only.
"""

from __future__ import annotations

import base64
import itertools
import socket
import time
from pathlib import Path

from nodeagent import wire
from tests.lab.nodeagent_peer import AGENT_TOKEN, KEYTAB, KRB5_CONF, Peer, read_state, start_agent, stop, wait_for


def _tree(tmp: Path, peer: Peer, ca: str) -> tuple[list[str], Path, Path, Path]:
    """A fake node: sysfs/procfs facts, a kernel command line, a config root; returns (args, conf, state, log)."""
    root = tmp / "node"
    for rel, text in {
        "sys/class/dmi/id/product_uuid": "8F2A0C4E-1B7D-4E55-9A31-0C2D5E6F7A8B\n",
        "proc/sys/kernel/hostname": "node7.example.test\n",
        "proc/sys/kernel/osrelease": "6.1.0-28-amd64\n",
        "proc/cpuinfo": "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu svm\n\n",
        "proc/meminfo": "MemTotal:        2048000 kB\n",
        "sys/class/net/ens3/address": "52:54:00:aa:bb:07\n",
        "sys/class/net/ens3/type": "1\n",
        "proc/uptime": "12.5 10.0\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "sys/class/net/ens3/device").mkdir()
    cmdline = tmp / "cmdline"
    cmdline.write_text(
        f"BOOT_IMAGE=vmlinuz drover.appliance={peer.boot_url} drover.token=tok1 drover.ca={ca} "
        "BOOTIF=01-52-54-00-aa-bb-07 quiet\n"
    )
    conf = tmp / "conf"
    (conf / "etc/libvirt").mkdir(parents=True)
    # An admin's existing line that must survive, and a managed key the agent must replace.
    (conf / "etc/libvirt/libvirtd.conf").write_text('log_level = 3\nauth_tcp = "none"\n')
    restarts = tmp / "restarts.log"
    state = tmp / "agent.json"
    args = [
        "--root",
        str(root),
        "--config-root",
        str(conf),
        "--cmdline",
        str(cmdline),
        "--state-file",
        str(state),
        "--restart",
        "command",
        "--restart-command",
        f"sh -c 'date +%s.%N >> {restarts}'",
        "--no-announce",
        "--error-backoff",
        "0.2",
        "--error-backoff-max",
        "0.5",
        "--refused-pause",
        "0.5",
    ]
    return args, conf, state, tmp / "agent.log"


def test_wrong_fingerprint_is_refused_and_nothing_is_sent(tmp_path: Path, peer: Peer) -> None:
    args, conf, state, log = _tree(tmp_path, peer, "sha256:" + "ab" * 32)
    agent = start_agent(*args, log=log)
    try:
        wait_for(lambda: read_state(state).get("state") == "refused", 20, "refused state", log)
        time.sleep(1.2)  # two more refused rounds
    finally:
        stop(agent)
    assert peer.requests == []  # not one identify or heartbeat reached the HTTPS peer
    assert "fingerprint mismatch" in read_state(state)["last_error"]
    assert "refusing it" in log.read_text()
    assert not (conf / "etc/libvirt/krb5.tab").exists()


def test_accepted_node_installs_credentials_heartbeats_and_stops_on_sigterm(tmp_path: Path, peer: Peer) -> None:
    args, conf, state, log = _tree(tmp_path, peer, "sha256:" + peer.pki.sha256)
    peer.fail_heartbeats = {2, 3}
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    agent = start_agent(*args, log=log, env_extra={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        # systemd (Type=notify) hears READY once the first identify has configured libvirtd: at boot
        # libvirtd.service is ordered after the agent and so starts configured, never restarted.
        ready = notify.recv(4096).decode()
        assert ready.startswith("READY=1\n") and "Kerberos as libvirt/node7" in ready, ready
        assert (tmp_path / "restarts.log").is_file()
        assert (conf / "etc/libvirt/krb5.tab").is_file()
        wait_for(lambda: len(peer.paths("/node/v1/heartbeat")) >= 6, 30, "six heartbeats", log)
        s = read_state(state)
        keytab = conf / "etc/libvirt/krb5.tab"
        assert keytab.read_bytes() == KEYTAB and keytab.stat().st_mode & 0o777 == 0o600
        assert (conf / "etc/krb5.conf").read_text() == KRB5_CONF
        libvirtd_conf = (conf / "etc/libvirt/libvirtd.conf").read_text()
        assert "log_level = 3" in libvirtd_conf and 'auth_tcp = "none"' not in libvirtd_conf
        for line in (
            "listen_tcp = 1",
            "listen_tls = 0",
            'auth_tcp = "sasl"',
            'sasl_allowed_username_list = ["drover-appliance"]',
        ):
            assert line in libvirtd_conf
        assert (conf / "etc/sasl2/libvirt.conf").read_text() == f"mech_list: gssapi\nkeytab: {keytab}\n"
        # collectd's config from the same credentials: this host's name, user and secret, readable by root only
        collectd_conf = conf / "etc/collectd/collectd.conf"
        assert collectd_conf.stat().st_mode & 0o777 == 0o600
        for line in ('Hostname "node7.example.test"', '<Server "127.0.0.1" "25826">', 'SecurityLevel "Sign"',
                     'Username "drover-host-7"', 'Password "collectd-secret"', 'PluginInstanceFormat "uuid"'):
            assert line in collectd_conf.read_text()  # fmt: skip
        assert len((tmp_path / "restarts.log").read_text().splitlines()) == 1
        assert s["state"] == "running" and s["host_id"] == 7 and s["errors"] >= 2

        (identify,) = peer.paths("/node/v1/identify")
        assert identify.token == "tok1" and identify.facts.uuid == "8f2a0c4e-1b7d-4e55-9a31-0c2d5e6f7a8b"
        assert identify.facts.boot_mac == "52:54:00:aa:bb:07" and identify.facts.nics[0].boot
        assert identify.facts.fqdn == "node7.example.test" and identify.facts.cpu.virtualization == "svm"
        beats: list[wire.Heartbeat] = peer.paths("/node/v1/heartbeat")
        assert all(b.has_credentials and b.agent_token == AGENT_TOKEN for b in beats)
        assert beats[0].uptime_seconds == 12

        gaps = [b - a for a, b in itertools.pairwise(peer.times("/node/v1/heartbeat"))]
        # after the 503s (beats 2, 3) the retry comes sooner than the 1 s interval: error back-off 0.2-0.5 s
        assert gaps[1] < 0.75 and gaps[2] < 0.75, gaps
        normal = [g for i, g in enumerate(gaps) if i not in (1, 2)]
        assert all(0.7 < g < 1.6 for g in normal), gaps  # 1 s +-20% jitter, plus request time
        assert len({round(g, 2) for g in normal}) > 1, gaps  # jitter: not a fixed period

        # pyinotify: deleting the keytab puts it back; libvirtd reads it at each authentication: no restart
        keytab.unlink()
        wait_for(keytab.exists, 10, "keytab re-installed", log)
        assert keytab.read_bytes() == KEYTAB and keytab.stat().st_mode & 0o777 == 0o600
        wait_for(lambda: read_state(state).get("reinstalls") == 1, 5, "reinstall counted", log)
        # ... while an edited libvirtd.conf is put back and libvirtd restarted on it
        libvirtd_conf_path = conf / "etc/libvirt/libvirtd.conf"
        libvirtd_conf_path.write_text(libvirtd_conf_path.read_text().replace('auth_tcp = "sasl"', 'auth_tcp = "none"'))
        wait_for(lambda: read_state(state).get("reinstalls") == 2, 10, "libvirtd.conf re-installed", log)
        assert 'auth_tcp = "sasl"' in libvirtd_conf_path.read_text()
        wait_for(lambda: len((tmp_path / "restarts.log").read_text().splitlines()) == 2, 5, "second restart", log)
    finally:
        took = stop(agent)
        notify.close()
    assert agent.returncode == 0 and took < 2.0, took
    assert read_state(state)["state"] == "stopped"


def test_pending_node_keeps_heartbeating_until_credentials_arrive(tmp_path: Path, peer: Peer) -> None:
    args, conf, state, log = _tree(tmp_path, peer, "sha256:" + peer.pki.sha256.upper())
    peer.status = wire.IdentifyStatus.PENDING
    peer.approve_after = 3
    keytab = conf / "etc/libvirt/krb5.tab"
    agent = start_agent(*args, log=log)
    try:
        wait_for(lambda: len(peer.paths("/node/v1/heartbeat")) >= 1, 20, "first heartbeat", log)
        assert read_state(state)["state"] == "pending" and not keytab.exists()
        wait_for(keytab.exists, 20, "credentials from the approving heartbeat", log)
        wait_for(lambda: len(peer.paths("/node/v1/heartbeat")) >= 4, 20, "a heartbeat after approval", log)
    finally:
        stop(agent)
    beats: list[wire.Heartbeat] = peer.paths("/node/v1/heartbeat")
    assert [b.has_credentials for b in beats[:3]] == [False, False, False] and beats[3].has_credentials
    assert base64.b64encode(keytab.read_bytes()).decode() == peer.credentials().keytab_b64
    assert len(peer.paths("/node/v1/identify")) == 1


def test_a_heartbeat_answer_asking_for_it_restarts_libvirtd_once(tmp_path: Path, peer: Peer) -> None:
    """Fencing's soft step on the node's side: the appliance lost our libvirtd while we still beat."""
    args, _conf, state, log = _tree(tmp_path, peer, "sha256:" + peer.pki.sha256)
    peer.restart_libvirtd_on = {3}
    restarts = tmp_path / "restarts.log"
    agent = start_agent(*args, log=log)
    try:
        wait_for(lambda: len(peer.paths("/node/v1/heartbeat")) >= 6, 30, "six heartbeats", log)
        # One restart when the credentials were installed, one for the third heartbeat's answer, no more.
        assert len(restarts.read_text().splitlines()) == 2
        assert read_state(state).get("soft_restarts") == 1
        assert "asks for a libvirtd restart" in log.read_text()
    finally:
        stop(agent)
