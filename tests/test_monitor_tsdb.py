"""The TSDB behind the receiver killed and restarted under load: reading goes on, drops are counted, it catches up."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from monitor import typesdb
from monitor.protocol import SecurityLevel, ValueList
from monitor.receiver import Receiver, ReceiverSettings
from monitor.security import verifier
from monitor.series import Namer
from monitor.tsdb import Writer, WriterSettings
from tests.lab import collectd_packets as cp
from tests.lab.tsdb import LabTsdb, start_tsdb

PASSWORD = b"pw"


def wait_for(check, timeout: float = 60, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def run_load(tsdb: LabTsdb, writer: Writer, seconds: float, down_at: float, up_at: float) -> tuple[Receiver, int]:
    """Send signed packets of 20 gauges each for `seconds`, the TSDB stopped between down_at and up_at."""
    namer = Namer(typesdb.load())
    receiver = Receiver(
        ReceiverSettings("127.0.0.1", 0, 4 << 20, 100000),
        verifier(SecurityLevel.SIGN, {"n1": PASSWORD}),
        lambda values: writer.add(namer.lines(values, [])),
        lambda user: "n1.lab.test",
    )
    receiver.start()
    writer.start()
    sent = 0
    base = int(time.time() - 120) << 30
    start = time.monotonic()
    stopped = restarted = False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while (elapsed := time.monotonic() - start) < seconds:
            if elapsed > down_at and not stopped:
                tsdb.stop()
                stopped = True
            if elapsed > up_at and not restarted:
                tsdb.embedded.start()
                restarted = True
            vls = [
                cp.Vl("n1.lab.test", "load", "gauge", ((cp.GAUGE, float(sent + i)),), type_instance=f"g{i % 20}",
                      time_hr=base + ((sent + i) << 20))
                for i in range(20)
            ]  # fmt: skip
            s.sendto(cp.sign(cp.encode(vls), "n1", PASSWORD), receiver.address)
            sent += 20
            time.sleep(0.01)
    wait_for(lambda: receiver.counters.decoded == receiver.counters.packets and receiver.idle(), what="decoding")
    return receiver, sent


def test_tsdb_down_under_load_buffers_then_catches_up(tmp_path: Path) -> None:
    tsdb = start_tsdb(tmp_path / "tsdb")
    writer = Writer(tsdb.url, WriterSettings(batch_lines=2000, flush_ms=100, retry_ms=200))
    try:
        receiver, sent = run_load(tsdb, writer, seconds=6, down_at=1.5, up_at=4)
        c = receiver.counters
        assert c.queue_drops == 0 and receiver.kernel_drops() == 0  # reading never waited on the TSDB
        assert c.values == sent
        assert writer.write_errors > 0  # it did notice the outage
        wait_for(lambda: writer.buffered == 0 and writer.stored == sent, what="the backlog written")
        assert writer.dropped == 0
        wait_for(lambda: tsdb.count('collectd_load_gauge{host="n1.lab.test"}') == sent, what="all samples queryable")
        receiver.stop()
    finally:
        writer.stop(0)
        tsdb.stop()


def test_a_full_buffer_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    tsdb = start_tsdb(tmp_path / "tsdb")
    writer = Writer(tsdb.url, WriterSettings(batch_lines=500, flush_ms=100, buffer_lines=1500, retry_ms=200))
    try:
        receiver, sent = run_load(tsdb, writer, seconds=5, down_at=1, up_at=3.5)
        assert receiver.counters.values == sent
        wait_for(lambda: writer.buffered == 0 and writer.stored + writer.dropped == sent, what="backlog out")
        assert writer.dropped > 0
        wait_for(lambda: tsdb.count('collectd_load_gauge{host="n1.lab.test"}') == writer.stored, what="stored")
        receiver.stop()
    finally:
        writer.stop(0)
        tsdb.stop()


def test_writer_batches_and_buffer_bounds_without_a_tsdb() -> None:
    writer = Writer("http://127.0.0.1:9", WriterSettings(batch_lines=10, buffer_lines=25))
    writer.add([f"m {i} 1" for i in range(20)])
    writer.add([f"m {i} 1" for i in range(20, 40)])
    assert writer.buffered == 25
    assert writer.dropped == 15
    assert writer._take() == [f"m {i} 1" for i in range(15, 25)]  # the oldest went first, batches in order


def test_names_of_value_lists() -> None:
    namer = Namer(typesdb.load())
    vl = ValueList("n1", "interface", "eth0", "if_octets", "", 1700000000.5, 10, (), (1, 2))
    unknown: list[ValueList] = []
    lines = namer.lines([vl, ValueList("n1", "x", "", "no_such_type", "", 1, 10, (), (1,))], unknown)
    assert lines == [
        'collectd_interface_if_octets_rx{host="n1",plugin_instance="eth0"} 1 1700000000500',
        'collectd_interface_if_octets_tx{host="n1",plugin_instance="eth0"} 2 1700000000500',
    ]
    assert len(unknown) == 1
    memory = ValueList("n1", "memory", "", "memory", "used", 1, 10, (), (float("nan"),))
    assert namer.lines([memory], []) == ['collectd_memory_memory{host="n1",type_instance="used"} NaN 1000']
