"""monitor's collectd decoder and security checks against tests/lab/collectd_packets.py, an encoder of its own."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.protocol import DsType, Failure, SecurityLevel, Severity
from monitor.security import verifier
from monitor.typesdb import load as load_types
from monitor.typesdb import parse as parse_types
from tests.lab import collectd_packets as cp

USERS = {"alice": b"s3cret", "bob": b"other"}
names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=0, max_size=20).filter(
    lambda s: len(s.encode()) < 120
)
value = st.one_of(
    st.tuples(st.just(cp.COUNTER), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(cp.GAUGE), st.floats(allow_nan=False)),
    st.tuples(st.just(cp.DERIVE), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just(cp.ABSOLUTE), st.integers(0, 2**64 - 1)),
)
vls = st.builds(
    cp.Vl,
    host=names,
    plugin=names,
    type=names,
    values=st.lists(value, min_size=1, max_size=6).map(tuple),
    plugin_instance=names,
    type_instance=names,
    time_hr=st.integers(0, 2**62),
    interval_hr=st.integers(0, 2**40),
)


def decode(datagram: bytes, level: SecurityLevel = SecurityLevel.NONE):  # type: ignore[no-untyped-def]
    return verifier(level, USERS).decode(datagram)


def check_same(sent: list[cp.Vl], got: list, user: str = "") -> None:  # type: ignore[type-arg]
    assert len(got) == len(sent)
    for s, g in zip(sent, got, strict=True):
        assert (g.host, g.plugin, g.plugin_instance, g.type, g.type_instance) == (
            s.host,
            s.plugin,
            s.plugin_instance,
            s.type,
            s.type_instance,
        )
        assert g.time == s.time_hr / 2**30
        assert g.interval == s.interval_hr / 2**30
        assert [int(k) for k in g.kinds] == [k for k, _ in s.values]
        assert list(g.values) == [v for _, v in s.values]
        assert g.user == user


@settings(max_examples=150, deadline=None)
@given(st.lists(vls, min_size=1, max_size=30))
def test_decoder_matches_an_independent_encoder(sent: list[cp.Vl]) -> None:
    out = decode(cp.encode(sent))
    assert out.failures == []
    check_same(sent, out.values)


@settings(max_examples=60, deadline=None)
@given(st.lists(vls, min_size=1, max_size=10), st.sampled_from(["alice", "bob"]), st.booleans())
def test_signed_and_encrypted_round_trip(sent: list[cp.Vl], user: str, encrypted: bool) -> None:
    payload = cp.encode(sent)
    packet = cp.encrypt(payload, user, USERS[user]) if encrypted else cp.sign(payload, user, USERS[user])
    out = decode(packet, SecurityLevel.SIGN)
    assert out.failures == []
    check_same(sent, out.values, user)


def test_the_four_data_source_kinds_on_the_wire() -> None:
    body = struct.pack(">H", 4) + bytes([0, 1, 2, 3])
    body += struct.pack(">Q", 2**64 - 1) + struct.pack("<d", 0.5) + struct.pack(">q", -7) + struct.pack(">Q", 42)
    packet = cp.string(0, "h") + cp.string(2, "p") + cp.string(4, "t") + cp.part(6, body)
    (vl,) = decode(packet).values
    assert vl.kinds == (DsType.COUNTER, DsType.GAUGE, DsType.DERIVE, DsType.ABSOLUTE)
    assert vl.values == (2**64 - 1, 0.5, -7, 42)
    # the gauge really is little-endian: the same 8 bytes big-endian would be another number
    assert struct.unpack("<d", struct.pack("<d", 0.5)) != struct.unpack(">d", struct.pack("<d", 0.5))


def test_seconds_time_and_interval_and_notifications() -> None:
    vl = cp.Vl("h", "load", "load", ((cp.GAUGE, 1.0), (cp.GAUGE, 2.0), (cp.GAUGE, 3.0)), time_hr=1700000000 << 30)
    packet = cp.encode([vl], hr=False) + cp.notification("h", 2, "disk almost full", 1700000001 << 30, "df")
    out = decode(packet)
    assert out.values[0].time == 1700000000.0
    assert out.values[0].interval == 10.0
    (n,) = out.notifications
    assert (n.host, n.plugin, n.severity, n.message) == ("h", "df", Severity.WARNING, "disk almost full")
    assert n.time == 1700000001.0


def test_unknown_parts_are_skipped() -> None:
    vl = cp.Vl("h", "p", "t", ((cp.GAUGE, 1.0),))
    packet = cp.part(0x7777, b"whatever") + cp.encode([vl]) + cp.part(0x0FFF, b"")
    out = decode(packet)
    assert out.failures == []
    assert len(out.values) == 1


def test_a_datagram_of_65535_bytes() -> None:
    vl = cp.Vl("h", "p", "t", ((cp.GAUGE, 1.0),))
    head = cp.encode([vl])
    filler = cp.part(0x7777, b"x" * (65535 - len(head) - 4))
    packet = filler + head
    assert len(packet) == 65535
    assert len(decode(packet).values) == 1


@pytest.mark.parametrize(
    ("packet", "kind"),
    [
        (cp.part(0, b"h"), Failure.MALFORMED),  # no NUL
        (cp.string(0, "h") + b"\x00\x06\x00", Failure.TRUNCATED),  # header cut short
        (cp.string(0, "h") + struct.pack(">HH", 6, 400) + b"x" * 10, Failure.TRUNCATED),  # part past the end
        (cp.part(6, struct.pack(">H", 2) + b"\x01\x01" + b"\0" * 9), Failure.MALFORMED),  # count vs length
        (cp.part(6, struct.pack(">H", 1) + b"\x09" + b"\0" * 8), Failure.MALFORMED),  # no such DS kind
        (cp.part(8, b"\0" * 4), Failure.MALFORMED),  # a number part of the wrong size
        (cp.string(2, "p" * 200), Failure.MALFORMED),  # longer than collectd's names
        (struct.pack(">HH", 6, 2), Failure.TRUNCATED),  # length smaller than a header
    ],
)
def test_bad_packets_are_refused_with_a_reason(packet: bytes, kind: Failure) -> None:
    out = decode(packet)
    assert out.values == []
    assert [f for f, _ in out.failures] == [kind]


def signed_vl() -> bytes:
    return cp.encode([cp.Vl("node1", "load", "load", ((cp.GAUGE, 0.1), (cp.GAUGE, 0.2), (cp.GAUGE, 0.3)))])


def test_sign_level_refuses_plain_wrong_password_tampered_and_unknown_users() -> None:
    payload = signed_vl()
    assert [f for f, _ in decode(payload, SecurityLevel.SIGN).failures] == [Failure.INSECURE]
    assert decode(payload, SecurityLevel.SIGN).values == []
    wrong = cp.sign(payload, "alice", b"guess")
    assert decode(wrong, SecurityLevel.SIGN).failures == [(Failure.BAD_SIGNATURE, "alice")]
    good = cp.sign(payload, "alice", USERS["alice"])
    for i in range(len(good)):
        if 4 <= i < 36 or i >= 36 + len("alice"):  # every byte of the HMAC and of the payload
            tampered = bytearray(good)
            tampered[i] ^= 0x01
            out = decode(bytes(tampered), SecurityLevel.SIGN)
            assert out.values == [], i
            assert out.failures, i
    assert decode(cp.sign(payload, "mallory", b"x"), SecurityLevel.SIGN).failures == [(Failure.UNKNOWN_USER, "mallory")]
    # a signature checks the user name too: alice's HMAC presented as bob's fails
    swapped = good.replace(b"alice", b"bob\0\0", 1)
    assert decode(swapped, SecurityLevel.SIGN).values == []
    # None still verifies what is signed: never "accepted unverified"
    assert decode(wrong, SecurityLevel.NONE).values == []


def test_encrypt_level_takes_only_encrypted_parts() -> None:
    payload = signed_vl()
    assert decode(cp.sign(payload, "alice", USERS["alice"]), SecurityLevel.ENCRYPT).values == []
    sealed = cp.encrypt(payload, "alice", USERS["alice"])
    assert len(decode(sealed, SecurityLevel.ENCRYPT).values) == 1
    assert len(decode(sealed, SecurityLevel.SIGN).values) == 1  # Sign accepts encrypted too
    wrong = cp.encrypt(payload, "alice", b"guess")
    assert decode(wrong, SecurityLevel.ENCRYPT).failures == [(Failure.BAD_CHECKSUM, "alice")]
    tampered = bytearray(sealed)
    tampered[-3] ^= 0x40
    assert decode(bytes(tampered), SecurityLevel.ENCRYPT).failures == [(Failure.BAD_CHECKSUM, "alice")]
    assert decode(sealed[:-5], SecurityLevel.ENCRYPT).values == []
    # plain parts after an encrypted one are not covered by it
    mixed = sealed + signed_vl()
    out = decode(mixed, SecurityLevel.ENCRYPT)
    assert len(out.values) == 1
    assert [f for f, _ in out.failures] == [Failure.INSECURE]


def test_types_db_of_the_installed_collectd() -> None:
    types = load_types()
    assert [(d.name, d.kind) for d in types["load"]] == [
        ("shortterm", DsType.GAUGE),
        ("midterm", DsType.GAUGE),
        ("longterm", DsType.GAUGE),
    ]
    assert [d.name for d in types["if_octets"]] == ["rx", "tx"]
    assert types["absolute"][0].kind is DsType.ABSOLUTE
    with pytest.raises(Exception, match="line 1"):
        parse_types("broken value:NOPE:0:U\n")
