"""The receiver against real collectd senders (Sign, Encrypt, None) and a real VictoriaMetrics behind it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor import typesdb
from monitor.protocol import Failure, SecurityLevel, ValueList
from monitor.receiver import Receiver, ReceiverSettings
from monitor.security import verifier
from monitor.series import Namer
from monitor.tsdb import Writer, WriterSettings
from tests.lab import collectd_packets as cp
from tests.lab.collectd import LabCollectd, start_sender
from tests.lab.tsdb import LabTsdb

USERS = {"alice": ("pw-alice", "node1.lab.test"), "bob": ("pw-bob", "node2.lab.test")}


def wait_for(check: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Rig:
    """A receiver at `level` writing through a Writer to the lab TSDB."""

    def __init__(self, level: SecurityLevel, tsdb: LabTsdb | None, queue: int = 20000) -> None:
        self.namer = Namer(typesdb.load())
        self.writer = Writer(tsdb.url, WriterSettings(flush_ms=200)) if tsdb else None
        self.got: list[ValueList] = []
        passwords = {u: p.encode() for u, (p, _) in USERS.items()}
        self.receiver = Receiver(
            ReceiverSettings("127.0.0.1", 0, 1 << 20, queue),
            verifier(level, passwords),
            self.sink,
            lambda user: USERS[user][1] if user in USERS else None,
        )

    def sink(self, values: list[ValueList]) -> None:
        self.got.extend(values)
        if self.writer is not None:
            self.writer.add(self.namer.lines(values, []))

    @property
    def port(self) -> int:
        return self.receiver.address[1]

    def hosts(self) -> set[str]:
        return {vl.host for vl in self.got}

    def start(self) -> Rig:
        if self.writer is not None:
            self.writer.start()
        self.receiver.start()
        return self

    def stop(self) -> None:
        self.receiver.stop()
        if self.writer is not None:
            self.writer.stop()


@pytest.fixture
def senders(tmp_path: Path) -> Iterator[Callable[..., LabCollectd]]:
    started: list[LabCollectd] = []

    def start(name: str, port: int, **kw: object) -> LabCollectd:
        lab = start_sender(tmp_path / name, port, **kw)  # type: ignore[arg-type]
        started.append(lab)
        return lab

    yield start
    for lab in started:
        lab.stop()


def test_real_collectd_signed_and_encrypted_into_the_tsdb(tsdb: LabTsdb, senders: Callable[..., LabCollectd]) -> None:
    rig = Rig(SecurityLevel.SIGN, tsdb).start()
    try:
        senders("signed", rig.port, hostname="node1.lab.test", level="Sign", user="alice", password="pw-alice")
        senders("sealed", rig.port, hostname="node2.lab.test", level="Encrypt", user="bob", password="pw-bob")
        senders("wrongpw", rig.port, hostname="node1.lab.test", level="Sign", user="alice", password="guess")
        senders("plain", rig.port, hostname="node3.lab.test", level="None")
        # alice's own secret, but naming bob's host: a node speaking for another
        senders("forger", rig.port, hostname="node2.lab.test", level="Sign", user="alice", password="pw-alice")
        c = rig.receiver.counters
        wait_for(
            lambda: {"node1.lab.test", "node2.lab.test"} <= rig.hosts()
            and c.failures[Failure.BAD_SIGNATURE] >= 2
            and c.failures[Failure.INSECURE] >= 2
            and c.failures[Failure.HOST_MISMATCH] >= 2,
            what="signed and encrypted values, and each refusal",
        )
        assert rig.hosts() == {"node1.lab.test", "node2.lab.test"}  # never node3 (plain) under Sign
        assert {vl.user for vl in rig.got if vl.host == "node2.lab.test"} == {"bob"}  # the forger's never kept
        assert c.failures_by_user[("alice", Failure.BAD_SIGNATURE)] >= 2
        assert c.failures_by_user[("alice", Failure.HOST_MISMATCH)] >= 2
        load = next(vl for vl in rig.got if vl.plugin == "load")
        assert len(load.values) == 3
        assert abs(load.time - time.time()) < 60
        assert load.interval == 1.0
        wait_for(lambda: rig.writer is not None and rig.writer.stored > 0, what="a TSDB write")
        wait_for(lambda: bool(tsdb.query('collectd_load_load_shortterm{host="node2.lab.test"}')), what="TSDB")
        rows = tsdb.query('collectd_memory_memory{host="node1.lab.test",type_instance="used"}')
        assert rows
        assert float(rows[0]["value"][1]) > 0
        assert not tsdb.query('{host="node3.lab.test"}')
    finally:
        rig.stop()


def test_encrypt_level_and_none_level_with_real_collectd(senders: Callable[..., LabCollectd]) -> None:
    strict = Rig(SecurityLevel.ENCRYPT, None).start()
    open_ = Rig(SecurityLevel.NONE, None).start()
    try:
        senders("sealed", strict.port, hostname="node2.lab.test", level="Encrypt", user="bob", password="pw-bob")
        senders("signed", strict.port, hostname="node1.lab.test", level="Sign", user="alice", password="pw-alice")
        senders("badkey", strict.port, hostname="node2.lab.test", level="Encrypt", user="bob", password="nope")
        senders("plain", open_.port, hostname="node3.lab.test", level="None")
        senders("wrongpw", open_.port, hostname="node1.lab.test", level="Sign", user="alice", password="guess")
        wait_for(
            lambda: "node2.lab.test" in strict.hosts()
            and strict.receiver.counters.failures[Failure.INSECURE] >= 2
            and strict.receiver.counters.failures[Failure.BAD_CHECKSUM] >= 2
            and "node3.lab.test" in open_.hosts()
            and open_.receiver.counters.failures[Failure.BAD_SIGNATURE] >= 2,
            what="encrypted accepted, signed refused under Encrypt; plain accepted, bad signature refused under None",
        )
        assert strict.hosts() == {"node2.lab.test"}
        assert open_.hosts() == {"node3.lab.test"}  # a wrongly signed packet is never accepted unverified
    finally:
        strict.stop()
        open_.stop()


def test_bad_datagrams_are_counted_and_the_receiver_keeps_running() -> None:
    rig = Rig(SecurityLevel.SIGN, None).start()
    good = cp.encode([cp.Vl("node1.lab.test", "load", "load", ((1, 0.5), (1, 0.4), (1, 0.3)), time_hr=1 << 30)])
    signed = cp.sign(good, "alice", b"pw-alice")
    tampered = bytearray(signed)
    tampered[-2] ^= 0xFF
    replayed_by_bob = cp.sign(good, "bob", b"pw-bob")  # bob's valid signature over node1's values
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for datagram in (
                b"\xff" * 100,  # garbage: a part "longer" than the datagram
                good[:-3],  # truncated plain parts
                signed[:50],  # truncated after the signature: the HMAC no longer matches
                bytes(tampered),
                cp.sign(good, "alice", b"wrong"),
                cp.sign(good, "mallory", b"x"),
                replayed_by_bob,
                cp.part(0x7777, b"x" * 65000) + signed,  # oversized: unknown part, then a signed section
                signed,
            ):
                s.sendto(datagram, ("127.0.0.1", rig.port))
        c = rig.receiver.counters
        wait_for(lambda: c.decoded == 9, what="all nine datagrams decoded")
        assert c.packets == 9
        assert c.values == 6  # the oversized datagram's signed section and the last one: 3 values each
        assert c.failures[Failure.TRUNCATED] == 2
        assert c.failures[Failure.BAD_SIGNATURE] == 3
        assert c.failures[Failure.UNKNOWN_USER] == 1
        assert c.failures[Failure.HOST_MISMATCH] == 1
        assert c.failures_by_user[("bob", Failure.HOST_MISMATCH)] == 1
        assert rig.receiver.kernel_drops() == 0
    finally:
        rig.stop()
