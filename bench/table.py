"""The short human table of `make bench`: one line per figure a user asks about, from latest.json.

Each row names its baseline (measured in the same run) so a figure reads as a ratio, not as a number
that only means something on the machine that produced it. A section that did not run (or failed)
shows a dash and says why, rather than an old figure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Figures = Mapping[str, Any]


@dataclass(frozen=True)
class Row:
    what: str
    section: str
    value: Callable[[Figures], str]
    versus: Callable[[Figures], str]


def _get(figures: Figures, *path: str) -> Any:
    at: Any = figures
    for key in path:
        if not isinstance(at, Mapping) or key not in at:
            raise KeyError("/".join(path))
        at = at[key]
    return at


def _fmt(value: Any, unit: str = "") -> str:
    if isinstance(value, float):
        value = f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return f"{value}{unit}"


def _ratio3(value: Any) -> str:
    """A ratio near 1 (memory growth), where three significant figures would hide what matters."""
    return f"{value:.3f}" if isinstance(value, float | int) else "—"


def _v(*path: str, unit: str = "") -> Callable[[Figures], str]:
    return lambda f: _fmt(_get(f, *path), unit)


def _ratio(*path: str, against: str) -> Callable[[Figures], str]:
    return lambda f: f"{_fmt(_get(f, *path))}x {against}"


def _none(_: Figures) -> str:
    return ""


ROWS: tuple[Row, ...] = (
    Row(
        "node image payload",
        "image",
        _v("payload_mb", unit=" MB"),
        _ratio("payload_vs_target", against="120 MB target"),
    ),
    Row(
        "node RAM used after boot",
        "image",
        _v("ram_used_after_boot_mb", unit=" MB"),
        _ratio("ram_vs_target", against="300 MB target"),
    ),
    Row("image build", "image", _v("build_seconds", unit=" s"), _none),
    Row(
        "PXE boot → login",
        "pxe",
        _v("boot_to_login_seconds", unit=" s"),
        _ratio("available_vs_plain_login", against="a plain boot → login (available)"),
    ),
    Row(
        "PXE boot → available",
        "pxe",
        _v("boot_to_available_seconds", unit=" s"),
        _ratio("available_vs_login", against="the same boot's login"),
    ),
    Row(
        "REST call with SPNEGO (median)",
        "api",
        _v("negotiate_whoami", "median_ms", unit=" ms"),
        _ratio("negotiate_vs_health_median_ratio", against="an unauthenticated health call"),
    ),
    Row(
        "identify with keytab",
        "enrolment",
        _v("identify", "identify_accepted_with_keytab_per_second", unit="/s"),
        _ratio("identify", "pending_vs_health_ratio", against="health calls (pending identify)"),
    ),
    Row(
        "identify through remote kadmin",
        "enrolment",
        _v("identify", "identify_accepted_with_keytab_remote_kadmin_per_second", unit="/s"),
        _ratio("identify", "remote_kadmin_vs_kadmin_local_ratio", against="kadmin.local"),
    ),
    Row(
        "VM state changes applied",
        "enrolment",
        _v("events", "vm_changes_applied_per_second", unit="/s"),
        _ratio("events", "applied_vs_insert_ratio", against="plain event inserts"),
    ),
    Row(
        "tasks (start+stop) through the queue",
        "taskengine",
        _v("tasks_per_s", unit="/s"),
        _ratio("ratio_queue_vs_raw", against="raw libvirt calls"),
    ),
    Row(
        "task latency p50 / p99 (40 queued at once)",
        "taskengine",
        lambda f: f"{_fmt(_get(f, 'p50_ms'))} / {_fmt(_get(f, 'p99_ms'))} ms",
        _none,
    ),
    Row(
        "4 workers vs 1",
        "taskengine",
        _v("workers_4", "tasks_per_s", unit="/s"),
        _ratio("ratio_4_vs_1_workers", against="1 worker"),
    ),
    Row(
        "live migration downtime (best of 3)",
        "taskengine",
        _v("migration_downtime_ms", unit=" ms"),
        lambda f: f"total {_fmt(_get(f, 'migration_total_ms'))} ms",
    ),
    Row("template upload through libvirt", "storage", _v("upload_mib_per_s", unit=" MiB/s"), _none),
    Row(
        "monitor values received (Sign)",
        "monitor",
        _v("values_per_s", unit="/s"),
        _ratio("ratio_vs_collectd", against="collectd's own server"),
    ),
    Row(
        "monitor values stored",
        "monitor",
        _v("stored_values_per_s", unit="/s"),
        lambda f: f"collectd+rrdtool {_fmt(_get(f, 'collectd_rrdtool_values_per_s'))}/s",
    ),
    Row(
        "hosts page, 1,000 hosts (p95)",
        "ui",
        _v("hosts_page_ms", unit=" ms"),
        _ratio("hosts_page", "vs_health_median", against="health (median)"),
    ),
    Row(
        "VMs page, 10,000 VMs (p95)",
        "ui",
        _v("vms_page_ms", unit=" ms"),
        _ratio("vms_page", "vs_health_median", against="health (median)"),
    ),
    Row(
        "load: 1,000 hosts' heartbeats (p50 / p99)",
        "load",
        lambda f: f"{_fmt(_get(f, 'heartbeats', 'p50_ms'))} / {_fmt(_get(f, 'heartbeats', 'p99_ms'))} ms",
        lambda f: f"{_fmt(_get(f, 'heartbeats', 'per_second'))}/s of 100/s asked, all at once with the rows below",
    ),
    Row(
        "load: identifies (p50 / p99)",
        "load",
        lambda f: f"{_fmt(_get(f, 'identifies', 'p50_ms'))} / {_fmt(_get(f, 'identifies', 'p99_ms'))} ms",
        lambda f: f"{_fmt(_get(f, 'identifies', 'per_second'))}/s of 10/s asked",
    ),
    Row(
        "load: tasks finished",
        "load",
        _v("tasks", "finished_per_second", unit="/s"),
        lambda f: f"of 100/s asked; enqueue -> finished p99 {_fmt(_get(f, 'tasks', 'p99_ms'))} ms",
    ),
    Row(
        "load: collectd packets unaccounted",
        "load",
        _v("collectd", "packets_unaccounted"),
        lambda f: f"of {_fmt(_get(f, 'collectd', 'packets_sent'))} sent; RSS last/second minute "
        f"{_ratio3(_get(f, 'rss_last_vs_second_sample'))} (serve), "
        f"{_ratio3(f.get('engine_rss_last_vs_second_sample'))} (task engine process)",
    ),
    Row(
        "load: machine CPU busy while it ran",
        "load",
        _v("cpu_percent_of_machine", "busy", unit=" %"),
        lambda f: f"of which the load generator {_fmt(_get(f, 'cpu_percent_of_machine', 'generator'))} %",
    ),
    Row(
        "SSE fan-out to 200 streams",
        "ui",
        _v("sse_fanout_ms", unit=" ms"),
        lambda f: f"RSS {_fmt(_get(f, 'rss_mib_with_streams'))} MiB with them",
    ),
)


def cells(merged: Figures, row: Row) -> tuple[str, str]:
    """The row's value and comparison; a dash and the reason when its section has no such figure."""
    figures = merged.get(row.section)
    if not isinstance(figures, Mapping):
        return "—", f"section {row.section} not run"
    if "error" in figures:
        return "—", f"section {row.section} failed: {str(figures['error'])[:60]}"
    try:
        value, versus = row.value(figures), row.versus(figures)
    except KeyError as missing:
        return "—", f"no figure {missing}"
    when = figures.get("finished_at")
    if when and when != merged.get("finished_at"):
        versus = f"{versus} (run {when})" if versus else f"(run {when})"
    return value, versus


def render(merged: Figures) -> str:
    """Markdown: the table, then the machine and when."""
    lines = ["| figure | value | against |", "|---|---|---|"]
    for row in ROWS:
        value, versus = cells(merged, row)
        lines.append(f"| {row.what} | {value} | {versus} |")
    machine = merged.get("machine", {})
    lines += [
        "",
        f"Measured {merged.get('finished_at', '?')} on {machine.get('cpus', '?')} CPUs, "
        f"Python {machine.get('python', '?')}; every section's full figures are in its own JSON file.",
    ]
    return "\n".join(lines) + "\n"
