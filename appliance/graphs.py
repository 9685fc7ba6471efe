"""Graphs as people read them: a host's, a VM's and the fleet's series over 1 h, 6 h or 1 d, ready to draw.

Each chart is one or more PromQL queries against the TSDB (what the monitor stored from collectd), all on
one time grid so a chart library can draw them without lining points up; counters (network, disk, a VM's
CPU time) become rates here. The fleet's task throughput comes from the database, so it shows even when the
TSDB is down. The API and the UI call these after the same permission check, done here.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import hosts, permissions, vms
from appliance.db.models import Task, TaskState
from appliance.errors import DroverError, UsageError
from appliance.permissions import Privilege
from appliance.timeseries import TsdbError, query

POINTS = 240  # per series: enough for a chart a page wide


class Span(enum.StrEnum):
    HOUR = "1h"
    SIX_HOURS = "6h"
    DAY = "1d"

    @property
    def seconds(self) -> int:
        return {Span.HOUR: 3600, Span.SIX_HOURS: 6 * 3600, Span.DAY: 86400}[self]

    @classmethod
    def parse(cls, text: str | None) -> Span:
        try:
            return cls(text or "1h")
        except ValueError:
            raise UsageError(f"span: {text!r} is not one of {', '.join(cls)}") from None


@dataclass(frozen=True)
class Grid:
    """Where every series of one answer has its points: start, start + step, ..., end (unix seconds)."""

    start: int
    end: int
    step: int

    @classmethod
    def of(cls, span: Span, now: float | None = None) -> Grid:
        step = max(1, span.seconds // POINTS)
        end = int((now if now is not None else time.time()) // step * step)
        return cls(end - span.seconds, end, step)

    @property
    def xs(self) -> list[int]:
        return list(range(self.start, self.end + 1, self.step))

    @property
    def window(self) -> str:
        """The range of a rate(): two steps at least, a minute at least (collectd's interval may be 10 s)."""
        return f"{max(60, 2 * self.step)}s"


@dataclass(frozen=True)
class Line:
    """One query; `label` names its series, `{name}` replaced by that label's value when it returns several."""

    promql: str
    label: str


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    unit: str  # %, bytes, B/s, load, count
    lines: tuple[Line, ...] = ()
    series: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "unit": self.unit, "series": self.series, "error": self.error}


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def host_charts(hostname: str, grid: Grid) -> list[Chart]:
    h = f"host={_q(hostname)}"
    w = grid.window
    return [
        Chart("cpu", "CPU busy", "%", (Line(f'100 - collectd_cpu_percent{{{h},type_instance="idle"}}', "busy"),)),
        Chart("load", "Load average", "load", (
            Line(f"collectd_load_load_shortterm{{{h}}}", "1 min"),
            Line(f"collectd_load_load_midterm{{{h}}}", "5 min"),
            Line(f"collectd_load_load_longterm{{{h}}}", "15 min"),
        )),
        Chart("memory", "Memory", "bytes", (
            Line(f'collectd_memory_memory{{{h},type_instance=~"used|cached|buffered|free"}}', "{type_instance}"),
        )),
        Chart("network", "Network (all interfaces)", "B/s", (
            Line(f"sum(rate(collectd_interface_if_octets_rx{{{h}}}[{w}]))", "received"),
            Line(f"sum(rate(collectd_interface_if_octets_tx{{{h}}}[{w}]))", "sent"),
        )),
        Chart("disk", "Disk (all disks)", "B/s", (
            Line(f"sum(rate(collectd_disk_disk_octets_read{{{h}}}[{w}]))", "read"),
            Line(f"sum(rate(collectd_disk_disk_octets_write{{{h}}}[{w}]))", "written"),
        )),
    ]  # fmt: skip


def vm_charts(uuid: str, grid: Grid) -> list[Chart]:
    # The virt plugin names a domain by its UUID (plugin instance), on whichever host runs it: sum() joins the
    # series of a VM that migrated within the range.
    d = f"plugin_instance={_q(uuid)}"
    w = grid.window
    return [
        # virt_cpu_total counts nanoseconds of CPU time: per second / 1e9 * 100 = % of one CPU
        Chart("cpu", "CPU (% of one vCPU)", "%", (
            Line(f"sum(rate(collectd_virt_virt_cpu_total{{{d}}}[{w}])) / 1e7", "used"),
        )),
        Chart("memory", "Memory", "bytes", (
            Line(f"max by (type_instance) (collectd_virt_memory{{{d}}})", "{type_instance}"),
        )),
        Chart("disk", "Disk", "B/s", (
            Line(f"sum(rate(collectd_virt_disk_octets_read{{{d}}}[{w}]))", "read"),
            Line(f"sum(rate(collectd_virt_disk_octets_write{{{d}}}[{w}]))", "written"),
        )),
        Chart("network", "Network", "B/s", (
            Line(f"sum(rate(collectd_virt_if_octets_rx{{{d}}}[{w}]))", "received"),
            Line(f"sum(rate(collectd_virt_if_octets_tx{{{d}}}[{w}]))", "sent"),
        )),
    ]


# One series per domain (plugin instance = its UUID); the plugin's host-wide totals have no instance.
_DOMAINS = 'collectd_virt_virt_cpu_total{plugin_instance!=""}'


def fleet_charts(grid: Grid) -> list[Chart]:
    return [
        Chart("cpu", "Fleet CPU busy (average of hosts)", "%",
              (Line('avg(100 - collectd_cpu_percent{type_instance="idle"})', "average"),
               Line('max(100 - collectd_cpu_percent{type_instance="idle"})', "busiest host"))),
        Chart("memory", "Fleet memory used", "bytes",
              (Line('sum(collectd_memory_memory{type_instance="used"})', "used"),)),
        Chart("vms", "VMs running (seen by the monitor)", "count",
              (Line(f"count(count by (plugin_instance) ({_DOMAINS}))", "running"),)),
    ]  # fmt: skip


def _fill(url: str, grid: Grid, charts: list[Chart]) -> list[Chart]:
    """Each chart with its series on the grid; once the TSDB fails, the rest say so without asking it again."""
    out: list[Chart] = []
    down: str | None = None
    xs = grid.xs
    index = {x: i for i, x in enumerate(xs)}
    for chart in charts:
        if down is not None:
            out.append(Chart(chart.key, chart.title, chart.unit, error=down))
            continue
        series: list[dict[str, Any]] = []
        try:
            for line in chart.lines:  # in the chart's order (1, 5, 15 min); the series of one line by label
                found: list[dict[str, Any]] = []
                params = {"query": line.promql, "start": str(grid.start), "end": str(grid.end),
                          "step": str(grid.step), "nocache": "1"}  # fmt: skip
                for row in query(url, "/api/v1/query_range", params).get("result", []):
                    values: list[float | None] = [None] * len(xs)
                    for t, v in row.get("values", []):
                        at = index.get(round(float(t)))
                        number = float(v)
                        if at is not None and math.isfinite(number):
                            values[at] = round(number, 4)
                    label = line.label.format_map(_Labels(row.get("metric", {})))
                    found.append({"label": label, "values": values})
                series += sorted(found, key=lambda x: x["label"])
        except TsdbError as exc:
            down = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
            out.append(Chart(chart.key, chart.title, chart.unit, error=down))
            continue
        except DroverError as exc:
            out.append(Chart(chart.key, chart.title, chart.unit, error=exc.message))
            continue
        out.append(Chart(chart.key, chart.title, chart.unit, series=series))
    return out


class _Labels(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def _tasks_chart(session: Session, grid: Grid) -> Chart:
    """Tasks finished and failed per step, from the task table (the TSDB plays no part)."""
    since = datetime.fromtimestamp(grid.start, UTC)
    rows = session.execute(select(Task.finished_at, Task.state).where(Task.finished_at >= since)).all()
    xs = grid.xs
    done: list[float | None] = [0.0] * len(xs)
    failed: list[float | None] = [0.0] * len(xs)
    for finished_at, state in rows:
        if finished_at is None:
            continue
        at = finished_at if finished_at.tzinfo else finished_at.replace(tzinfo=UTC)
        slot = min(len(xs) - 1, max(0, math.ceil((at.timestamp() - grid.start) / grid.step)))
        target = failed if state is TaskState.FAILED else done
        target[slot] = (target[slot] or 0) + 1
    return Chart("tasks", f"Tasks ended per {_human(grid.step)}", "count",
                 series=[{"label": "finished", "values": done}, {"label": "failed", "values": failed}])  # fmt: skip


def _human(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def _answer(grid: Grid, span: Span, charts: list[Chart], **extra: Any) -> dict[str, Any]:
    return {**extra, "span": str(span), "start": grid.start, "end": grid.end, "step": grid.step, "x": grid.xs,
            "charts": [c.as_dict() for c in charts]}  # fmt: skip


def for_host(session: Session, tsdb_url: str, principal: str, key: str, span: Span) -> dict[str, Any]:
    permissions.require(session, principal, Privilege.VIEW, None, "see host graphs")
    host = hosts.find(session, key)
    grid = Grid.of(span)
    hostname = host.hostname
    session.rollback()  # let go of the database while the TSDB answers
    return _answer(grid, span, _fill(tsdb_url, grid, host_charts(hostname, grid)), host=hostname)


def for_vm(session: Session, tsdb_url: str, principal: str, key: str, span: Span) -> dict[str, Any]:
    vm = vms.find(session, key)
    permissions.require(session, principal, Privilege.VIEW, vm.hardware_pool_id, f"see graphs of VM {vm.name}")
    grid = Grid.of(span)
    name, uuid = vm.name, vm.uuid
    session.rollback()
    return _answer(grid, span, _fill(tsdb_url, grid, vm_charts(uuid, grid)), vm=name, uuid=uuid)


def for_fleet(session: Session, tsdb_url: str, principal: str, span: Span) -> dict[str, Any]:
    permissions.require(session, principal, Privilege.VIEW, None, "see fleet graphs")
    grid = Grid.of(span)
    tasks = _tasks_chart(session, grid)
    session.rollback()
    return _answer(grid, span, [*_fill(tsdb_url, grid, fleet_charts(grid)), tasks])
