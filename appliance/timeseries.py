"""The time-series engine's query side, as the API reads it: the Prometheus HTTP API (VictoriaMetrics or any
PromQL service at [monitor] tsdb_url). The write side and the embedded engine are the monitor's (monitor/tsdb.py).
"""

from __future__ import annotations

from typing import Any

import httpx

from appliance.errors import DroverError, UsageError


class TsdbError(DroverError):
    """The TSDB is unreachable or failed: the API answers 503."""

    http_status = 503
    exit_code = 6


def query(url: str, path: str, params: dict[str, str]) -> Any:
    """GET a Prometheus API path; the `data` of a success, TsdbError otherwise."""
    try:
        response = httpx.get(f"{url.rstrip('/')}{path}", params=params, timeout=30)
    except httpx.HTTPError as exc:
        raise TsdbError(f"TSDB at {url} not reachable: {exc}", "is [monitor] tsdb_url right, is it running?") from None
    try:
        body = response.json()
    except ValueError:
        raise TsdbError(f"TSDB answered HTTP {response.status_code} without JSON") from None
    if response.status_code == 400 or body.get("status") != "success":
        if response.status_code == 400 or body.get("errorType") in ("bad_data", "execution"):
            raise UsageError(f"query refused by the TSDB: {body.get('error', '')[:300]}")
        raise TsdbError(f"TSDB query failed: HTTP {response.status_code}: {body.get('error', '')[:300]}")
    return body["data"]
