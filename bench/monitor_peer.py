"""The bench's child processes: the packet sender, and drover's receiver run alone (no-op sink or a TSDB).

    python -m bench.monitor_peer send --port P --seconds S --hosts N [--sign]     prints {"packets", "values"}
    python -m bench.monitor_peer receive --port P --stats FILE [--sign] [--tsdb URL]

The sender builds collectd-like packets (host, time_hr, interval_hr, then plugin/type parts only when
they change; ~1452 bytes, as collectd's MaxPacketSize default) for N hosts, each host signing as its
own user, and stamps each packet one second later than the one before (from --days-ago on), so every series' timestamps
rise by >= 1 s (what rrdtool needs) and collectd's cache never sees a value "too old".
The receiver writes its counters (and RSS) to FILE every 0.2 s and on SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from tests.lab import collectd_packets as cp

PACKET_SIZE = 1452
MAGIC = 0x0123456789ABCDEF  # a time_hr placeholder, patched per packet


def users(hosts: int) -> dict[str, tuple[str, str]]:
    """user -> (password, host): one collectd user per host, as drover issues them."""
    return {f"bench-{k}": (f"secret-{k}", f"bench-{k}.lab.test") for k in range(hosts)}


def _value_lists(host: str, start: int) -> list[cp.Vl]:
    kinds = (
        ("cpu", "", "percent", ("idle", "user", "system", "wait", "nice", "interrupt", "softirq", "steal"), 1),
        ("load", "", "load", ("",), 3),
        ("memory", "", "memory", ("used", "free", "cached", "buffered"), 1),
        ("interface", "eth{}", "if_octets", ("",), 2),
        ("interface", "eth{}", "if_packets", ("",), 2),
        ("disk", "sd{}", "disk_octets", ("",), 2),
        ("disk", "sd{}", "disk_ops", ("",), 2),
    )
    out: list[cp.Vl] = []
    i = start
    for round_ in range(8):
        for plugin, pinst, type_, instances, n in kinds:
            for ti in instances:
                values = tuple((cp.GAUGE, float(i + j)) for j in range(n))
                out.append(cp.Vl(host, plugin, type_, values, pinst.format(round_), ti, MAGIC, 10 << 30))
                i += 1
    return out


def templates(hosts: int, sign: bool) -> list[tuple[bytes, int, int, str, bytes]]:
    """(payload, offset of time_hr, values, user, password) per host: one packet's worth of value lists."""
    out = []
    for user, (password, host) in users(hosts).items():
        room = PACKET_SIZE - ((4 + 32 + len(user)) if sign else 0)
        vls = _value_lists(host, 0)
        keep = 1
        while keep < len(vls) and len(cp.encode(vls[: keep + 1])) <= room:
            keep += 1
        payload = cp.encode(vls[:keep])
        offset = payload.index(struct.pack(">Q", MAGIC))
        values = sum(len(v.values) for v in vls[:keep])
        out.append((payload, offset, values, user, password.encode()))
    return out


def send(port: int, seconds: float, hosts: int, sign: bool, days_ago: float) -> dict[str, int]:
    packets = values = 0
    plan = templates(hosts, sign)
    # a second per packet from `days_ago` on: each run gets its own span of time, so no two runs write the
    # same series at the same instant (a TSDB keeps one sample per series and timestamp)
    stamp = int(time.time() - days_ago * 86400) << 30
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = ("127.0.0.1", port)
    deadline = time.monotonic() + seconds
    sha256 = hashlib.sha256
    while time.monotonic() < deadline:
        for payload, offset, n, user, password in plan:
            buf = bytearray(payload)
            struct.pack_into(">Q", buf, offset, stamp)
            stamp += 1 << 30
            if sign:
                name = user.encode()
                mac = hmac.new(password, name + buf, sha256).digest()
                data = struct.pack(">HH", 0x200, 36 + len(name)) + mac + name + buf
            else:
                data = bytes(buf)
            try:
                sock.sendto(data, address)
            except OSError:
                continue  # ENOBUFS under overload: that packet was not sent, not counted
            packets += 1
            values += n
    return {"packets": packets, "values": values}


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def receive(port: int, stats_file: Path, sign: bool, hosts: int, tsdb: str) -> None:
    from monitor import typesdb  # noqa: PLC0415 - imported after fork/exec in the pinned child only
    from monitor.protocol import SecurityLevel, ValueList  # noqa: PLC0415
    from monitor.receiver import Receiver, ReceiverSettings  # noqa: PLC0415
    from monitor.security import verifier  # noqa: PLC0415
    from monitor.series import Namer  # noqa: PLC0415
    from monitor.tsdb import Writer  # noqa: PLC0415

    table = users(hosts)
    writer = Writer(tsdb) if tsdb else None
    namer = Namer(typesdb.load())

    def sink(values: list[ValueList]) -> None:
        if writer is not None:
            writer.add(namer.lines(values, []))

    receiver = Receiver(
        ReceiverSettings("127.0.0.1", port),
        verifier(SecurityLevel.SIGN if sign else SecurityLevel.NONE, {u: p.encode() for u, (p, _) in table.items()}),
        sink,
        lambda user: table[user][1] if user in table else None,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    receiver.start()
    if writer is not None:
        writer.start()
    rss_start = _rss_kib()

    def dump() -> None:
        c = receiver.counters
        data = {
            "packets": c.packets, "decoded": c.decoded, "values": c.values, "queue_drops": c.queue_drops,
            "queued": receiver.queued, "kernel_drops": receiver.kernel_drops(),
            "failures": dict(c.failures), "rss_start_kib": rss_start, "rss_kib": _rss_kib(),
            "stored": writer.stored if writer else 0, "buffered": writer.buffered if writer else 0,
            "tsdb_dropped": writer.dropped if writer else 0,
        }  # fmt: skip
        tmp = stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, stats_file)

    while not stop.wait(0.2):
        dump()
    receiver.stop()
    if writer is not None:
        writer.stop(0)
    dump()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("send", "receive"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--hosts", type=int, default=64)
    p.add_argument("--sign", action="store_true")
    p.add_argument("--stats", type=Path)
    p.add_argument("--tsdb", default="")
    p.add_argument("--days-ago", type=float, default=2)
    args = p.parse_args(argv)
    if args.mode == "send":
        print(json.dumps(send(args.port, args.seconds, args.hosts, args.sign, args.days_ago)))
    else:
        receive(args.port, args.stats, args.sign, args.hosts, args.tsdb)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
