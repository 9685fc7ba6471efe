"""Each host's current load, picked out of the value lists as they pass, for the database (placement).

From collectd's `load` (1-minute average), `cpu` with ValuesPercentage and ReportByCpu off (busy =
100 - idle), `memory` (used) and `virt` (each plugin instance is a running domain, by UUID).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from appliance.monitoring import Load
from monitor.protocol import ValueList


@dataclass
class _Seen:
    load_average: float | None = None
    cpu_busy_percent: float | None = None
    memory_used_mib: int | None = None
    domains: dict[str, float] = field(default_factory=dict)  # plugin instance -> when last seen
    virt: bool = False
    interval: float = 10.0
    changed: bool = False


class LoadTracker:
    def __init__(self) -> None:
        self._hosts: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def observe(self, values: list[ValueList]) -> None:
        now = time.monotonic()
        with self._lock:
            for vl in values:
                plugin = vl.plugin
                if plugin not in ("load", "cpu", "memory", "virt"):
                    continue
                seen = self._hosts.get(vl.host)
                if seen is None:
                    seen = self._hosts[vl.host] = _Seen()
                if vl.interval:
                    seen.interval = vl.interval
                if plugin == "load" and vl.type == "load":
                    seen.load_average = float(vl.values[0])
                elif plugin == "cpu" and vl.type == "percent" and vl.type_instance == "idle" and not vl.plugin_instance:
                    seen.cpu_busy_percent = round(max(0.0, 100.0 - float(vl.values[0])), 2)
                elif plugin == "memory" and vl.type == "memory" and vl.type_instance == "used":
                    seen.memory_used_mib = int(vl.values[0]) >> 20
                elif plugin == "virt" and vl.plugin_instance:
                    seen.virt = True
                    seen.domains[vl.plugin_instance] = now
                else:
                    continue
                seen.changed = True

    def take(self) -> dict[str, Load]:
        """The load of every host that reported since the last take."""
        now = time.monotonic()
        out: dict[str, Load] = {}
        with self._lock:
            for host, seen in self._hosts.items():
                if not seen.changed:
                    continue
                seen.changed = False
                window = 3 * seen.interval  # a domain not reported for three intervals is gone
                seen.domains = {d: t for d, t in seen.domains.items() if now - t <= window}
                vms = len(seen.domains) if seen.virt else None
                out[host] = Load(seen.load_average, seen.cpu_busy_percent, seen.memory_used_mib, vms)
        return out
