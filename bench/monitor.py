"""Monitor benchmark: drover's receiver against collectd's own network server, same packets, side by side.

One sender (bench/monitor_peer.py) pinned to CPU 0 sends signed, collectd-like 1452-byte packets
from 64 hosts as fast as it can for SECONDS; the receiver under test, all its threads pinned to
CPU 1, takes what it can. Four pairings, each run RUNS times in alternating order:
- sign: drover's receiver decoding and verifying (no-op sink) vs collectd in Sign mode with no writer;
- store: drover's receiver writing into VictoriaMetrics (also on CPU 1) vs collectd writing rrdtool files.
values/s = values accepted (after the backlog drained) / (drain end - send start). Loss = 1 - accepted /
sent: under overload both lose, and the figure says how much. collectd's accepted count is its own
network plugin's `total_values-dispatch-accepted`; rrdtool's side counts values that left collectd's
write queue (written or refused by rrdtool, which drops same-second updates silently).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.monitor_peer import users
from tests.lab.collectd import LabCollectd, start_server
from tests.lab.net import free_udp_port
from tests.lab.tsdb import start_tsdb

log = logging.getLogger(__name__)

SECONDS = 5.0
RUNS = 3
HOSTS = 64
SENDER_CPU, RECEIVER_CPU = "0", "1"
ROOT = Path(__file__).resolve().parent.parent


def _python(*args: str, cpus: str) -> list[str]:
    return ["taskset", "-c", cpus, sys.executable, "-m", "bench.monitor_peer", *args]


_trials = itertools.count()


def _send(port: int) -> dict[str, int]:
    # Each trial's stamps start two days after the previous one's (a run spans ~1 day at a second a packet),
    # 25 days back at first: all within the bench TSDB's month of retention, none overlapping.
    days_ago = 25 - 2 * next(_trials)
    argv = _python("send", "--port", str(port), "--seconds", str(SECONDS), "--hosts", str(HOSTS), "--sign",
                   "--days-ago", str(days_ago), cpus=SENDER_CPU)  # fmt: skip
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
    result: dict[str, int] = json.loads(out.stdout)
    return result


def _drain(read: Callable[[], tuple[float, bool]], quiet: float, limit: float = 120) -> tuple[float, float]:
    """Poll (count, idle) until idle and the count unchanged for `quiet` s: (count, when it last changed)."""
    last, changed = read()[0], time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)
        count, idle = read()
        if count != last:
            last, changed = count, time.monotonic()
        elif idle and time.monotonic() - changed >= quiet:
            break
    return last, changed


def _drover(tmp: Path, tsdb_url: str = "") -> dict[str, Any]:
    port = free_udp_port()
    stats = tmp / f"drover-{port}.json"
    argv = _python("receive", "--port", str(port), "--stats", str(stats), "--hosts", str(HOSTS), "--sign",
                   *(["--tsdb", tsdb_url] if tsdb_url else []), cpus=RECEIVER_CPU)  # fmt: skip
    child = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        while not stats.is_file():
            if child.poll() is not None:
                raise RuntimeError("the drover receiver exited at start")
            time.sleep(0.05)
        cpu0 = _cpu_seconds(child.pid)
        start = time.monotonic()
        sent = _send(port)
        key = "stored" if tsdb_url else "values"

        def read() -> tuple[float, bool]:
            s = json.loads(stats.read_text())
            return s[key], s["queued"] == 0 and s["buffered"] == 0

        accepted, end = _drain(read, quiet=1.0)
        cpu = _cpu_seconds(child.pid) - cpu0
        final = json.loads(stats.read_text())
    finally:
        child.terminate()
        child.wait(30)
    return _figures(sent, accepted, end - start, cpu, final)


def _collectd(tmp: Path, writer: str = "") -> dict[str, Any]:
    port = free_udp_port()
    table = {u: p for u, (p, _) in users(HOSTS).items()}
    lab: LabCollectd = start_server(tmp / f"collectd-{port}", port, level="Sign", users=table, writer=writer,
                                    cpus=RECEIVER_CPU)  # fmt: skip
    try:
        base = lab.stat("network", "total_values-dispatch-accepted") or 0.0
        cpu0 = _cpu_seconds(lab.process.pid)
        start = time.monotonic()
        sent = _send(port)

        def read() -> tuple[float, bool]:
            accepted = (lab.stat("network", "total_values-dispatch-accepted") or 0.0) - base
            queued = (lab.stat("network", "queue_length") or 0.0) + (
                lab.stat("collectd-write_queue", "queue_length") or 0.0
            )
            return accepted, queued == 0

        # collectd reports its counters once a second: quiet for 2.5 s means two unchanged reports
        accepted, end = _drain(read, quiet=2.5)
        cpu = _cpu_seconds(lab.process.pid) - cpu0
        rss = _rss_kib(lab.process.pid)
        drops = _udp_drops(port)
    finally:
        lab.stop()
    return _figures(sent, accepted, end - start, cpu, {"rss_kib": rss, "kernel_drops": drops})


def _figures(
    sent: dict[str, int], accepted: float, seconds: float, cpu: float, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "sent_values": sent["values"],
        "sent_packets": sent["packets"],
        "accepted_values": int(accepted),
        "seconds": round(seconds, 2),
        "values_per_s": round(accepted / seconds, 1),
        "loss_ratio": round(1 - accepted / sent["values"], 4) if sent["values"] else 0.0,
        "receiver_cpu_seconds": round(cpu, 2),
        **{k: extra[k] for k in ("rss_kib", "rss_start_kib", "kernel_drops", "queue_drops", "failures") if k in extra},
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _udp_drops(port: int) -> int:
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            return int(fields[12])
    return 0


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(float(r[key]) for r in runs)), 4)


def run() -> dict[str, Any]:
    if len(os.sched_getaffinity(0)) < 2:
        raise RuntimeError("the monitor bench pins sender and receiver to two different CPUs")
    with tempfile.TemporaryDirectory(prefix="drover-bench-monitor-") as name:
        tmp = Path(name)
        tsdb = start_tsdb(tmp / "tsdb", retention="1")  # a month: the stamps start 25 days back
        # the TSDB shares the receiver's CPU: storage is part of what the receiver side costs
        subprocess.run(["taskset", "-a", "-p", "-c", RECEIVER_CPU, str(tsdb.embedded.process.pid)],  # type: ignore[union-attr]
                       check=True, capture_output=True)  # fmt: skip
        try:
            sign: dict[str, list[dict[str, Any]]] = {"drover": [], "collectd": []}
            store: dict[str, list[dict[str, Any]]] = {"drover": [], "collectd": []}
            for i in range(RUNS):
                order = ("drover", "collectd") if i % 2 == 0 else ("collectd", "drover")
                for who in order:
                    log.info("monitor bench run %d: %s, sign", i + 1, who)
                    sign[who].append(_drover(tmp) if who == "drover" else _collectd(tmp))
                for who in order:
                    log.info("monitor bench run %d: %s, store", i + 1, who)
                    store[who].append(_drover(tmp, tsdb.url) if who == "drover" else _collectd(tmp, "rrdtool"))
            # what the TSDB really holds, against what it acknowledged: a check, not a figure taken on trust
            counted = tsdb.count('{__name__=~"collectd_.+"}', "31d")
        finally:
            tsdb.stop()
    ours, theirs = _median(sign["drover"], "values_per_s"), _median(sign["collectd"], "values_per_s")
    rss = [(r.get("rss_start_kib", 0), r.get("rss_kib", 0)) for r in sign["drover"] + store["drover"]]
    return {
        "values_per_s": ours,
        "collectd_values_per_s": theirs,
        "ratio_vs_collectd": round(ours / theirs, 3) if theirs else None,
        "loss_ratio": _median(sign["drover"], "loss_ratio"),
        "collectd_loss_ratio": _median(sign["collectd"], "loss_ratio"),
        "stored_values_per_s": _median(store["drover"], "values_per_s"),
        "collectd_rrdtool_values_per_s": _median(store["collectd"], "values_per_s"),
        "stored_loss_ratio": _median(store["drover"], "loss_ratio"),
        "tsdb_samples_acknowledged": sum(r["accepted_values"] for r in store["drover"]),
        "tsdb_samples_counted": counted,
        "collectd_rrdtool_loss_ratio": _median(store["collectd"], "loss_ratio"),
        "receiver_rss_kib_start_end": rss,
        "method": f"{RUNS} runs alternating order, {SECONDS:.0f} s of Sign-mode 1452-byte packets from {HOSTS} "
        f"hosts, sender on CPU {SENDER_CPU}, receiver (and the TSDB) on CPU {RECEIVER_CPU}",
        "runs": {"sign": sign, "store": store},
    }
