"""Metrics over the API: a host's or a VM's series from the TSDB, and /metrics for Prometheus.

GET /api/v1/hosts/{key}/metrics            latest value of every series of the host, and its load row
GET /api/v1/hosts/{key}/metrics?series=S   S over [start, end] every step seconds (a graph's points)
GET /api/v1/vms/{key}/metrics[?series=S]   the same for a VM: the virt plugin's series under its UUID
GET /metrics                               Prometheus exposition of the appliance's own counters (public)

start and end are unix seconds, `now`, or `-<n>s|m|h|d` before now (default the last hour);
step is seconds (default: about 240 points).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from pydantic import Field
from sqlalchemy import or_, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from appliance import hosts, monitoring
from appliance.api.access import caller_roles
from appliance.api.auth import caller
from appliance.api.schema import Query, accepts
from appliance.api.state import session, state
from appliance.db.models import Vm
from appliance.db.models.users import Role
from appliance.errors import Forbidden, NotFound, UsageError
from appliance.text import as_id
from appliance.timeseries import query

_SERIES = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,199}$")
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_POINTS = 11000  # Prometheus' own limit per series


def _require(request: Request, what: str) -> None:
    with session(request) as s:
        held = caller_roles(request, s)
    if not any(r.includes(Role.MONITOR) for r in held):
        raise Forbidden(f"{caller(request).principal} may not {what}", "it needs the monitor role")


def _when(text: str, now: float, name: str) -> float:
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative[1]) * _UNITS[relative[2]]
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name}: {text!r} is not unix seconds, `now` or -<n>s|m|h|d") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{name}: {text!r} is not a time")
    return value


def _range(request: Request) -> tuple[float, float, float]:
    now = time.time()
    params = request.query_params
    start = _when(params.get("start", "-1h"), now, "start")
    end = _when(params.get("end", "now"), now, "end")
    if end <= start:
        raise UsageError(f"end ({end:.0f}) must be after start ({start:.0f})")
    if "step" in params:
        try:
            step = float(params["step"])
        except ValueError:
            raise UsageError(f"step: {params['step']!r} is not a number of seconds") from None
        if not math.isfinite(step) or step <= 0:
            raise UsageError("step must be a positive number of seconds")
    else:
        step = max(1.0, math.ceil((end - start) / 240))
    if (end - start) / step > MAX_POINTS:
        points = (end - start) / step
        raise UsageError(f"{points:.0f} points per series is too many (at most {MAX_POINTS})", "raise step")
    return start, end, step


def _series_name(text: str) -> str:
    if not _SERIES.match(text):
        raise UsageError(f"series: {text!r} is not a metric name", "e.g. load_load_shortterm or collectd_memory_memory")
    return text if text.startswith("collectd_") else f"collectd_{text}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _metrics(request: Request, selector: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Query the TSDB (blocking: run in the thread pool) for the latest values or one series' range."""
    url = state(request).cfg.tsdb_url
    params = request.query_params
    unknown = sorted(set(params) - {"series", "start", "end", "step"})
    if unknown:
        raise UsageError(f"{unknown[0]}: unknown parameter", "parameters: series, start, end, step")
    if "series" not in params:
        at = _when(params.get("end", "now"), time.time(), "end")
        # nocache (here and for ranges): VictoriaMetrics otherwise hides the newest 30 s (-search.latencyOffset),
        # a guard for slow scrapers that drover's batched writes (flushed every flush_ms) do not need
        promql = f'{{__name__=~"collectd_.+",{selector}}}'
        data = query(url, "/api/v1/query", {"query": promql, "time": str(at), "nocache": "1"})
        series = [
            {"name": r["metric"].pop("__name__", ""), "labels": r["metric"], "value": float(r["value"][1]),
             "time": r["value"][0]}
            for r in data.get("result", [])
        ]  # fmt: skip
        series.sort(key=lambda r: (r["name"], sorted(r["labels"].items())))
        return {**extra, "time": at, "series": series}
    name = _series_name(params["series"])
    start, end, step = _range(request)
    data = query(
        url,
        "/api/v1/query_range",
        {"query": f"{name}{{{selector}}}", "start": str(start), "end": str(end), "step": str(step), "nocache": "1"},
    )
    series = [
        {"labels": {k: v for k, v in r["metric"].items() if k != "__name__"},
         "points": [[t, float(v)] for t, v in r["values"]]}
        for r in data.get("result", [])
    ]  # fmt: skip
    return {**extra, "series_name": name, "start": start, "end": end, "step": step, "series": series}


class MetricsQuery(Query):
    """No series: the latest value of every series (at `end`); with one: its points over [start, end]."""

    series: str | None = Field(None, max_length=200, description="e.g. load_load_shortterm")
    start: str | None = Field(None, max_length=40, description="unix seconds, `now` or -<n>s|m|h|d (default -1h)")
    end: str | None = Field(None, max_length=40, description="unix seconds, `now` or -<n>s|m|h|d (default now)")
    step: str | None = Field(None, max_length=40, description="seconds between points (default: about 240 points)")


@accepts(query=MetricsQuery)
async def host_metrics(request: Request, query: MetricsQuery) -> JSONResponse:
    _require(request, "see host metrics")
    with session(request) as s:
        host = hosts.find(s, request.path_params["key"])
        hostname = host.hostname
        extra = {"host": hostname, "host_id": host.id, "load": monitoring.load_of(host)}
    body = await run_in_threadpool(_metrics, request, f"host={_quote(hostname)}", extra)
    return JSONResponse(body)


@accepts(query=MetricsQuery)
async def vm_metrics(request: Request, query: MetricsQuery) -> JSONResponse:
    _require(request, "see VM metrics")
    key = request.path_params["key"]
    with session(request) as s:
        row_id = as_id(key)
        clauses = [Vm.uuid == key.lower(), Vm.name == key] + ([Vm.id == row_id] if row_id is not None else [])
        found = s.scalars(select(Vm).where(or_(*clauses))).all()
        if len(found) != 1:
            raise NotFound(f"no VM {key!r}" if not found else f"{key!r} names {len(found)} VMs", "use its id or UUID")
        uuid = found[0].uuid
        extra = {"vm": found[0].name, "vm_id": found[0].id, "uuid": uuid}
    # The virt plugin on each node reports a domain under plugin instance = its UUID (drover's node
    # config), so a VM's series follow it from host to host across migrations.
    selector = f'plugin_instance={_quote(uuid)},__name__=~"collectd_virt_.+"'
    body = await run_in_threadpool(_metrics, request, selector, extra)
    return JSONResponse(body)


def _exposition(counts: dict[str, dict[str, int]], stats: dict[str, Any] | None) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        lines.extend((f"# HELP {name} {help_}", f"# TYPE {name} {kind}"))

    for what in ("hosts", "vms", "tasks"):
        family(f"drover_{what}", "gauge", f"{what} by state")
        for st, n in sorted(counts[what].items()):
            lines.append(f'drover_{what}{{state={_quote(st)}}} {n}')
    if stats is not None:
        counters = {
            "packets": "datagrams read from the socket",
            "bytes": "bytes read from the socket",
            "values": "values accepted (a value list of 3 counts 3)",
            "value_lists": "value lists accepted",
            "notifications": "notifications received",
            "queue_drops": "datagrams dropped because the decode queue was full",
            "kernel_drops": "datagrams the kernel dropped on the receiver's socket (buffer full)",
            "udp_rcvbuf_errors": "the system's UDP RcvbufErrors (all sockets)",
            "unknown_type": "value lists whose type types.db does not know",
            "stored": "samples the TSDB accepted",
            "tsdb_dropped": "samples dropped while the TSDB was unreachable and the buffer full",
            "tsdb_write_errors": "failed TSDB writes (retried)",
        }
        for key, help_ in counters.items():
            family(f"drover_monitor_{key}_total", "counter", help_)
            lines.append(f"drover_monitor_{key}_total {stats[key]}")
        family("drover_monitor_tsdb_buffered", "gauge", "samples waiting for the TSDB")
        lines.append(f"drover_monitor_tsdb_buffered {stats['tsdb_buffered']}")
        family("drover_monitor_queued", "gauge", "datagrams waiting to be decoded")
        lines.append(f"drover_monitor_queued {stats['queued']}")
        family("drover_monitor_failures_total", "counter", "datagrams or parts refused, by reason")
        for kind, n in sorted(stats["failures"].items()):
            lines.append(f"drover_monitor_failures_total{{kind={_quote(kind)}}} {n}")
        family("drover_monitor_user_failures_total", "counter", "refusals by collectd user and reason")
        for row in stats["failures_by_user"]:
            labels = f"user={_quote(row['user'])},kind={_quote(row['kind'])}"
            lines.append(f"drover_monitor_user_failures_total{{{labels}}} {row['count']}")
    return "\n".join(lines) + "\n"


def prometheus(request: Request) -> PlainTextResponse:
    with session(request) as s:
        counts = monitoring.counts_by_state(s)
    monitor = state(request).monitor
    text = _exposition(counts, monitor.stats() if monitor is not None else None)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
