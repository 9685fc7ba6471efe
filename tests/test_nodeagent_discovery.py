"""Discovery order with real responders: dnsmasq answers the SRV query on a loopback port, a real
zeroconf registration (multicast on 127.0.0.1 works in this sandbox) answers mDNS. zeroconf is a distro
package, so the mDNS side runs under /usr/bin/python3 in child processes."""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent import discovery
from tests.lab.nodeagent_peer import ROOT, SYSTEM_PYTHON, system_python


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={port}",
            "--user=root",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
            "--srv-host=_drover._tcp.example.test,appliance.example.test,8081,10,5",
            "--srv-host=_drover._tcp.example.test,backup.example.test,8082,20,5",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            discovery.srv_query("_drover._tcp.example.test", "127.0.0.1", port, 0.2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "dnsmasq did not start"
    yield port
    proc.terminate()
    proc.wait(5)


def test_srv_lookup_against_dnsmasq(dnsmasq: int) -> None:
    records = discovery.srv_query("_drover._tcp.example.test", "127.0.0.1", dnsmasq)
    assert [(r.priority, r.port, r.target) for r in records] == [
        (10, 8081, "appliance.example.test"),
        (20, 8082, "backup.example.test"),
    ]
    with pytest.raises(ValueError, match="rcode 5"):  # no upstream: dnsmasq refuses; find_srv moves on
        discovery.srv_query("_drover._tcp.nowhere.test", "127.0.0.1", dnsmasq)


def _discover(cmdline_url: str, dns_port: int, domain: str, mdns_type: str) -> str:
    code = (
        "import sys; from pathlib import Path; from nodeagent import discovery as d\n"
        "s = d.DiscoverySettings(dns_servers=(('127.0.0.1', int(sys.argv[2])),), dns_domains=(sys.argv[3],),\n"
        "    resolv_conf=Path('/nonexistent'), mdns_type=sys.argv[4], mdns_interfaces=('127.0.0.1',), mdns_timeout=3)\n"
        "f = d.discover(sys.argv[1], 'node1.example.test', s); print(f.source, f.url)"
    )
    proc = system_python(code, cmdline_url, str(dns_port), domain, mdns_type)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_discovery_order_cmdline_then_srv_then_mdns(dnsmasq: int, tmp_path: Path) -> None:
    # a service type of our own, so another engineer's appliance announcing _drover._tcp cannot answer
    mdns_type = f"_d{secrets.token_hex(4)}._tcp.local."
    announce = (
        "import socket, sys, time; from zeroconf import IPVersion, ServiceInfo, Zeroconf\n"
        "zc = Zeroconf(interfaces=['127.0.0.1'], ip_version=IPVersion.V4Only)\n"
        "addr = [socket.inet_aton('127.0.0.1')]\n"
        "zc.register_service(ServiceInfo(sys.argv[1], 'appl.' + sys.argv[1], addresses=addr,\n"
        "    port=8081, properties={'path': '/'}, server='appl.local.'))\n"
        "print('ready', flush=True); sys.stdin.read(); zc.close()"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    announcer = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", announce, mdns_type], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert announcer.stdout is not None and announcer.stdout.readline().strip() == "ready"
        assert _discover("http://cmd.example.test:8081", dnsmasq, "example.test", mdns_type) == (
            "cmdline http://cmd.example.test:8081"
        )
        assert _discover("", dnsmasq, "example.test", mdns_type) == "dns-srv http://appliance.example.test:8081"
        assert _discover("", dnsmasq, "nowhere.test", mdns_type) == "mdns http://127.0.0.1:8081"
    finally:
        announcer.communicate("", timeout=10)


def test_mdns_on_every_interface_finds_nothing_without_crashing() -> None:
    """A node whose kernel line and DNS name no appliance browses on all its interfaces. The string "all" made
    the node's zeroconf raise TypeError, which ended the agent (seen on a UEFI node.iso boot). Run in a network
    namespace of its own with only loopback up: "every interface" sends nothing anywhere else."""
    code = "import sys; from nodeagent import discovery as d\nprint(repr(d.find_mdns(sys.argv[1], 1.0, ())))"
    script = f'ip link set lo up && exec {SYSTEM_PYTHON} -c "$0" "$1"'
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, code, f"_d{secrets.token_hex(4)}._tcp.local."],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=Path(discovery.__file__).resolve().parent.parent,  # the repo: nodeagent as the node runs it
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "''", proc.stdout + proc.stderr
