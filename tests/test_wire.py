"""The node <-> appliance wire format: round trips, and strict refusal of anything malformed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nodeagent import wire


def _facts(**over: Any) -> wire.Facts:
    values: dict[str, Any] = {
        "uuid": "8f2a0c4e-1b7d-4e55-9a31-0c2d5e6f7a8b",
        "hostname": "node1",
        "fqdn": "node1.example.test",
        "arch": "x86_64",
        "kernel": "6.1.0-28-amd64",
        "memory_bytes": 1 << 30,
        "cpu": wire.Cpu("QEMU Virtual CPU", 2, 2, 1, ("fpu", "vmx", "sse2")),
        "nics": (wire.Nic("ens3", "52:54:00:12:34:56", 1000, ("10.0.2.15/24",), True),),
        "disks": (wire.Disk("vda", 10 << 30, "virtio", "S1"),),
        "boot_mac": "52:54:00:12:34:56",
        "agent_version": "0.1.0",
    }
    values.update(over)
    return wire.Facts(**values)


def test_identify_round_trip() -> None:
    request = wire.IdentifyRequest("drv1.abc.def", _facts())
    assert wire.decode(wire.IdentifyRequest, wire.encode(request)) == request


def test_response_with_credentials_round_trip() -> None:
    creds = wire.Credentials("libvirt/node1.example.test@R", "R", "[libdefaults]\n", "AAAA", ("drover",))
    response = wire.IdentifyResponse(wire.IdentifyStatus.ACCEPTED, 7, 15, creds)
    again = wire.decode(wire.IdentifyResponse, wire.encode(response))
    assert again == response and again.status is wire.IdentifyStatus.ACCEPTED


def test_macs_and_uuids_are_normalized() -> None:
    data = wire.to_dict(wire.IdentifyRequest("", _facts()))
    data["facts"]["uuid"] = data["facts"]["uuid"].upper()
    data["facts"]["nics"][0]["mac"] = "52-54-00-12-34-56".upper()
    facts = wire.from_dict(wire.IdentifyRequest, data).facts
    assert facts.uuid == "8f2a0c4e-1b7d-4e55-9a31-0c2d5e6f7a8b"
    assert facts.nics[0].mac == "52:54:00:12:34:56"


def test_cpu_virtualization_flag() -> None:
    assert _facts().cpu.virtualization == "vmx"
    assert wire.Cpu("x", 1, 1, 1, ("svm",)).virtualization == "svm"
    assert wire.Cpu("x", 1, 1, 1, ()).virtualization == ""


def _mutate(path: list[str | int], value: Any) -> bytes:
    data: Any = wire.to_dict(wire.IdentifyRequest("t", _facts()))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "message: expected an object"),
        (_mutate(["token"], 5), "token: expected a string"),
        (_mutate(["facts", "uuid"], KeyError), "facts.uuid: missing"),
        (_mutate(["facts", "uuid"], "not-a-uuid"), "facts.uuid: not a UUID"),
        (_mutate(["facts", "nics", 0, "mac"], "52:54:00"), "facts.nics[0].mac: not a MAC"),
        (_mutate(["facts", "memory_bytes"], -1), "facts.memory_bytes: out of range"),
        (_mutate(["facts", "memory_bytes"], True), "facts.memory_bytes: expected an integer"),
        (_mutate(["facts", "cpu", "flags"], "vmx"), "facts.cpu.flags: expected a list"),
        (_mutate(["facts", "hostname"], "x" * 600), "facts.hostname: longer than 512"),
        (_mutate(["facts", "nics"], [{}] * 300), "facts.nics: more than 256 items"),
        (_mutate(["facts", "extra"], 1), "facts.extra: unknown field"),
        (b"{" + b'"a":"' + b"x" * (300 * 1024) + b'"}', "larger than"),
    ],
)
def test_malformed_is_refused_naming_the_field(body: bytes, message: str) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.decode(wire.IdentifyRequest, body)
    assert message in str(info.value)


def test_status_must_be_known() -> None:
    data = wire.to_dict(wire.HeartbeatResponse(wire.IdentifyStatus.PENDING, 10))
    data["status"] = "approved-ish"
    with pytest.raises(wire.WireError, match="status"):
        wire.from_dict(wire.HeartbeatResponse, data)


def test_hostnames() -> None:
    assert wire.valid_hostname("node1.example.test")
    assert wire.valid_hostname("NODE2.example.test.")  # valid; folded to node2.example.test where compared
    assert not wire.valid_hostname("node1.example.test\n")  # `$` used to match before the newline
    assert not wire.valid_hostname("-bad.example.test")
    assert not wire.valid_hostname("a b")
