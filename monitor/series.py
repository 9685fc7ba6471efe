"""Value lists as time series: a Prometheus-style name per data source and labels for the rest.

`collectd_<plugin>_<type>[_<ds>]` (the data-source name from types.db, left out when it is the
usual `value`), labels `host`, and `plugin_instance` / `type_instance` when set: `load` becomes
collectd_load_load_shortterm{host="n1"}, a VM's CPU from the virt plugin (plugin instance = the
domain's UUID) collectd_virt_virt_cpu_total{host="n1",plugin_instance="<uuid>"}.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable

from monitor.protocol import ValueList
from monitor.typesdb import DataSource

_BAD = re.compile(r"[^a-zA-Z0-9_]")
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def metric_name(plugin: str, type_: str, ds: str) -> str:
    name = f"collectd_{plugin}_{type_}" + ("" if ds == "value" else f"_{ds}")
    return _BAD.sub("_", name)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value != value:  # noqa: PLR0124 - NaN, the one value unequal to itself
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class Namer:
    """Turns value lists into Prometheus text lines; caches the name of each (plugin, type) pair."""

    def __init__(self, types: dict[str, tuple[DataSource, ...]]) -> None:
        self.types = types
        self._names: dict[tuple[str, str], tuple[str, ...]] = {}

    def names(self, plugin: str, type_: str) -> tuple[str, ...] | None:
        key = (plugin, type_)
        cached = self._names.get(key)
        if cached is None:
            sources = self.types.get(type_)
            if sources is None:
                return None
            cached = self._names[key] = tuple(metric_name(plugin, type_, ds.name) for ds in sources)
        return cached

    def lines(self, values: Iterable[ValueList], unknown: list[ValueList]) -> list[str]:
        """`name{labels} value ms` per data source; value lists whose type types.db lacks go to `unknown`."""
        out: list[str] = []
        now = time.time()
        for vl in values:
            names = self.names(vl.plugin, vl.type)
            if names is None or len(names) != len(vl.values):
                unknown.append(vl)
                continue
            labels = f'host="{_label(vl.host)}"'
            if vl.plugin_instance:
                labels += f',plugin_instance="{_label(vl.plugin_instance)}"'
            if vl.type_instance:
                labels += f',type_instance="{_label(vl.type_instance)}"'
            stamp = int((vl.time or now) * 1000)
            for name, value in zip(names, vl.values, strict=True):
                out.append(f"{name}{{{labels}}} {_number(value)} {stamp}")
        return out
