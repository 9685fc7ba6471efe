"""Lab fixture: a throwaway VictoriaMetrics (Debian victoria-metrics) on a free loopback port.

Started with the appliance's own embedded-TSDB code, as the KDC fixture uses the realm's. Samples
become queryable about a second after a write; `flush()` forces them out (LAB.md), and queries
here pass nocache=1 so a test never reads a cached empty answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.tsdb import Embedded
from tests.lab.net import free_port


@dataclass
class LabTsdb:
    embedded: Embedded

    @property
    def url(self) -> str:
        return self.embedded.url

    def flush(self) -> None:
        httpx.get(f"{self.url}/internal/force_flush", timeout=10).raise_for_status()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query, after a flush; the `result` list."""
        self.flush()
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql, "nocache": "1"}, timeout=10)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    def count(self, promql: str, window: str = "1d") -> int:
        """How many samples `promql` (a selector) holds over the last `window`."""
        rows = self.query(f"sum(count_over_time({promql}[{window}]))")
        return int(float(rows[0]["value"][1])) if rows else 0

    def stop(self) -> None:
        self.embedded.stop()

    def restart(self) -> None:
        self.embedded.stop()
        self.embedded.start()


def start_tsdb(root: Path, port: int | None = None, retention: str = "1d") -> LabTsdb:
    embedded = Embedded(root / "data", "127.0.0.1", port or free_port(), retention, root / "victoria-metrics.log")
    embedded.start()
    return LabTsdb(embedded)


@pytest.fixture
def tsdb(tmp_path: Path) -> Iterator[LabTsdb]:
    lab = start_tsdb(tmp_path / "tsdb")
    yield lab
    lab.stop()
