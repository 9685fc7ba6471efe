"""API benchmark: Kerberos-authenticated requests against unauthenticated ones on the same server.

Baseline: GET /api/v1/health (no auth, no DB) on a kept-open connection. Measured: GET
/api/v1/whoami with a fresh SPNEGO token per request (GSSAPI init + accept + DB role lookup).
Both against a real `drover serve` and a real KDC from the test lab, in the same run.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from appliance.client import Client
from tests.lab.appliance import start_appliance
from tests.lab.kdc import APPLIANCE_HOST, start_kdc

REQUESTS = 400  # per kind; bounded in count
TIME_LIMIT = 60.0  # and in time, per kind


def _measure(call: Any) -> list[float]:
    times: list[float] = []
    deadline = time.monotonic() + TIME_LIMIT
    for _ in range(REQUESTS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if time.monotonic() > deadline:
            break
    return times


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "requests": len(times),
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 3),
        "per_second": round(len(times) / sum(times), 1),
    }


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="drover-bench-api-") as tmp:
        kdc = start_kdc(Path(tmp) / "kdc")
        try:
            lab = start_appliance(kdc, kdc.root)
            try:
                ccache = kdc.ticket("admin")["KRB5CCNAME"]
                os.environ["KRB5_CONFIG"] = str(kdc.krb5_conf)  # libkrb5 in this process reads it
                with httpx.Client(base_url=lab.local_url, trust_env=False) as plain:
                    plain.get("/api/v1/health").raise_for_status()
                    baseline = _measure(lambda: plain.get("/api/v1/health").raise_for_status())
                with Client(lab.local_url, service_host=APPLIANCE_HOST, ccache=ccache) as client:
                    client.get("/api/v1/whoami")  # the first call also fetches the service ticket
                    negotiate = _measure(lambda: client.get("/api/v1/whoami"))
            finally:
                lab.stop()
        finally:
            kdc.process.terminate()
            kdc.process.wait(timeout=10)
    base, auth = _summary(baseline), _summary(negotiate)
    return {
        "baseline_health": base,
        "negotiate_whoami": auth,
        "negotiate_vs_health_median_ratio": round(auth["median_ms"] / base["median_ms"], 2),
    }
