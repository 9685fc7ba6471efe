"""Node agent pieces without a network: kernel command line, DNS SRV wire format, heartbeat schedule,
libvirtd.conf editing, facts from a fake sysfs/procfs tree and from this real machine."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nodeagent import cmdline, discovery, facts, heartbeat, libvirtd
from tests.lab.nodeagent_peer import system_python

FP = "sha256:" + "AB:" * 31 + "AB"


def test_cmdline_parses_drover_params_and_bootif(tmp_path: Path) -> None:
    path = tmp_path / "cmdline"
    path.write_text(
        f"BOOT_IMAGE=/vmlinuz root=live:http://x/rootfs.squashfs drover.appliance=http://10.0.2.2:8081/ "
        f'drover.token=drv1.abc drover.ca={FP} BOOTIF=01-52-54-00-12-34-56 quiet x="a b" '
        "drover.libvirt_allow=drover,ops/admin@EXAMPLE.TEST\n"
    )
    k = cmdline.read(path)
    assert k.libvirt_allow == ("drover", "ops/admin@EXAMPLE.TEST")
    assert k.appliance == "http://10.0.2.2:8081" and k.token == "drv1.abc"
    assert k.ca_sha256 == "ab" * 32 and k.boot_mac == "52:54:00:12:34:56"
    assert k.params["x"] == "a b" and k.params["quiet"] == ""
    assert cmdline.parse("quiet") == cmdline.KernelCmdline(params={"quiet": ""})


@pytest.mark.parametrize(
    "text",
    [
        "drover.ca=md5:00",
        "drover.ca=sha256:abcd",
        "BOOTIF=01-zz",
        "drover.appliance=x",
        "drover.libvirt_allow=drover,a'b",
        'drover.libvirt_allow="x y"',
    ],
)
def test_cmdline_refuses_malformed_drover_params(text: str) -> None:
    with pytest.raises(cmdline.CmdlineError):
        cmdline.parse(text)


def test_srv_query_and_answer_wire_format() -> None:
    query = discovery.build_srv_query("_drover._tcp.example.test", 0x1234)
    # a hand-made answer with name compression: the target points back into the question
    answer = bytearray(query)
    answer[2:4] = b"\x81\x80"
    answer[6:8] = b"\x00\x02"
    for prio, port in ((20, 9999), (10, 8081)):
        rdata = prio.to_bytes(2, "big") + b"\x00\x05" + port.to_bytes(2, "big") + b"\x09appliance\xc0\x19"
        answer += b"\xc0\x0c\x00\x21\x00\x01\x00\x00\x00\x3c" + len(rdata).to_bytes(2, "big") + rdata
    records = sorted(discovery.parse_srv_response(bytes(answer), 0x1234), key=lambda r: r.priority)
    assert records[0] == discovery.SrvRecord(10, 5, 8081, "appliance.example.test")
    with pytest.raises(ValueError, match="another query"):
        discovery.parse_srv_response(bytes(answer), 0x4321)


def test_heartbeat_schedule_jitters_and_bounds_error_backoff() -> None:
    s = heartbeat.Schedule(jitter=0.2, error_base=1, error_max=8, rng=random.Random(1))
    normal = [s.next_delay(10, 0) for _ in range(50)]
    assert all(8 <= d <= 12 for d in normal) and len(set(normal)) == 50
    assert 0.8 <= s.next_delay(10, 1) <= 1.2 and 3.2 <= s.next_delay(10, 3) <= 4.8
    assert all(s.next_delay(10, n) <= 8 * 1.2 for n in range(1, 60))  # bounded
    assert s.next_delay(2, 5) <= 2.4  # never longer than the normal interval


def test_libvirtd_conf_keeps_admin_lines_and_is_idempotent() -> None:
    existing = 'log_level = 1\nlisten_tcp = 0\nsasl_allowed_username_list = [\n  "old",\n]\n# auth_tcp = "sasl"\n'
    once = libvirtd.render_conf(existing, libvirtd.managed_settings(["drover"]))
    assert libvirtd.render_conf(once, libvirtd.managed_settings(["drover"])) == once
    assert "log_level = 1" in once and '# auth_tcp = "sasl"' in once and '"old"' not in once
    assert once.count("listen_tcp") == 1 and 'sasl_allowed_username_list = ["drover"]' in once


def test_facts_from_a_fake_tree(tmp_path: Path) -> None:
    files = {
        "sys/class/dmi/id/product_uuid": "8F2A0C4E-1B7D-4E55-9A31-0C2D5E6F7A8B\n",
        "proc/sys/kernel/hostname": "node1.example.test\n",
        "proc/sys/kernel/osrelease": "6.1.0-28-amd64\n",
        "proc/meminfo": "MemTotal:        4028000 kB\nMemFree: 1 kB\n",
        "sys/class/net/ens3/address": "52:54:00:12:34:56\n",
        "sys/class/net/ens3/type": "1\n",
        "sys/class/net/ens3/speed": "1000\n",
        "sys/class/net/ens4/address": "52:54:00:12:34:57\n",
        "sys/class/net/ens4/speed": "-1\n",
        "sys/class/net/virbr0/address": "52:54:00:00:00:01\n",  # no device link: a bridge, left out
        "sys/class/net/lo/address": "00:00:00:00:00:00\n",
        "sys/block/vda/size": "20971520\n",
        "sys/block/vda/queue/rotational": "0\n",
        "sys/block/vda/serial": "S1\n",
        "sys/block/sda/size": "2048\n",
        "sys/block/sda/queue/rotational": "1\n",
        "sys/block/sda/device/model": "QEMU HARDDISK\n",
        "sys/block/loop0/size": "100\n",
        "sys/block/zram0/size": "100\n",
    }
    cpuinfo = "".join(
        f"processor\t: {i}\nmodel name\t: Xeon\nphysical id\t: {i // 4}\ncpu cores\t: 2\nflags\t\t: fpu vmx sse2\n\n"
        for i in range(8)
    )
    files["proc/cpuinfo"] = cpuinfo
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    for nic in ("ens3", "ens4"):
        (tmp_path / "sys/class/net" / nic / "device").mkdir()
    ip_json = json.dumps([{"ifname": "ens3", "addr_info": [{"local": "10.0.2.15", "prefixlen": 24}]}])
    f = facts.gather(tmp_path, ip_json=ip_json, boot_mac="52:54:00:12:34:57", agent_version="0.1.0")
    assert f.uuid == "8f2a0c4e-1b7d-4e55-9a31-0c2d5e6f7a8b" and (f.hostname, f.fqdn) == ("node1", "node1.example.test")
    assert f.memory_bytes == 4028000 * 1024 and f.kernel == "6.1.0-28-amd64"
    assert (f.cpu.model, f.cpu.count, f.cpu.cores, f.cpu.sockets, f.cpu.virtualization) == ("Xeon", 8, 4, 2, "vmx")
    assert [(n.name, n.speed_mbps, n.addresses, n.boot) for n in f.nics] == [
        ("ens3", 1000, ("10.0.2.15/24",), False),
        ("ens4", 0, (), True),
    ]
    assert [(d.name, d.size_bytes, d.model, d.serial, d.rotational) for d in f.disks] == [
        ("sda", 2048 * 512, "QEMU HARDDISK", "", True),
        ("vda", 10 << 30, "", "S1", False),
    ]


def test_facts_on_this_machine_with_the_system_python() -> None:
    proc = system_python(
        "import json; from pathlib import Path; from nodeagent import facts, proc, wire\n"
        "f = facts.gather(Path('/'), ip_json=proc.run(['ip', '-j', 'addr', 'show']))\n"
        "print(wire.encode(f).decode())"
    )
    assert proc.returncode == 0, proc.stderr
    f = json.loads(proc.stdout)
    assert f["cpu"]["count"] >= 1 and f["memory_bytes"] > 0 and f["kernel"]
    assert any(n["addresses"] for n in f["nics"]), f["nics"]  # this VM's eth0 has an address


def test_a_routable_address_means_the_network_is_up() -> None:
    up = json.dumps(
        [
            {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}]},
            {"ifname": "ens3", "addr_info": [{"local": "fe80::5054:ff:fe12:3456", "prefixlen": 64}]},
        ]
    )
    assert not facts.has_routable_address(facts.parse_ip_json(up))  # loopback and link-local only: DHCP not done
    leased = json.loads(up)
    leased[1]["addr_info"].append({"local": "10.0.2.15", "prefixlen": 24})
    assert facts.has_routable_address(facts.parse_ip_json(json.dumps(leased)))
    v6 = [{"ifname": "ens3", "addr_info": [{"local": "2001:db8::15", "prefixlen": 64}]}]
    assert facts.has_routable_address(facts.parse_ip_json(json.dumps(v6)))


def test_the_dhcp_lease_names_the_node_before_the_resolver(tmp_path: Path) -> None:
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/hostname").write_text("node4\n")  # what networkd set from DHCP
    assert facts.names(tmp_path) == ("node4", "node4")  # no lease: the name as it is
    leases = tmp_path / "run/systemd/netif/leases"
    leases.mkdir(parents=True)
    (leases / "2").write_text(
        "# This is private data. Do not parse.\nADDRESS=10.0.2.15\nHOSTNAME=node4\nDOMAINNAME=rack1.example.test\n"
    )
    assert facts.names(tmp_path) == ("node4", "node4.rack1.example.test")
