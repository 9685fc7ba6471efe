"""Fuzz benchmark: at least 10,000 cases against each surface of a real `drover serve`, counted and timed.

Surfaces: every REST operation of the appliance's OpenAPI document (schemathesis, as an admin, fresh
Negotiate token per request, half the cases aimed at real objects), the node service's identify and its
heartbeat (hypothesis, over HTTPS). The goal is 0 server errors (5xx or no answer) and a whole database
afterwards. Baseline, in the same run: GET /api/v1/health; each surface's rate is also given as a ratio to it.
FUZZ_CASES (environment) overrides the 10,000.
"""

from __future__ import annotations

import math
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.lab.appliance import start_appliance
from tests.lab.fuzz import Report, fuzz_api, fuzz_node
from tests.lab.kdc import APPLIANCE_HOST, start_kdc
from tests.lab.tenants import seed
from tests.test_api_fuzz_lab import ADMIN, SETTINGS

CASES = int(os.environ.get("FUZZ_CASES", "10000"))


def _rate(report: Report, seconds: float) -> dict[str, Any]:
    return {**report.summary(), "seconds": round(seconds, 1), "per_second": round(report.cases / seconds, 1),
            "first_failures": report.failures[:5]}  # fmt: skip


def _whole(database_url: str) -> bool:
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as raw:
        return bool(raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                    and raw.execute("PRAGMA foreign_key_check").fetchall() == [])  # fmt: skip


def run() -> dict[str, Any]:
    from appliance.db.engine import make_engine  # noqa: PLC0415 - the section imports its stack when it runs

    with tempfile.TemporaryDirectory(prefix="drover-bench-fuzz-") as tmp:
        kdc = start_kdc(Path(tmp) / "kdc")
        try:
            lab = start_appliance(kdc, Path(tmp) / "appliance", timeout=180, settings=SETTINGS)
            try:
                assert lab.drover("user", "add", ADMIN, "--role", "admin").returncode == 0
                engine = make_engine(lab.database_url)
                tenants = seed(engine, kdc.realm.name)
                engine.dispose()
                os.environ["KRB5_CONFIG"] = str(kdc.krb5_conf)  # libkrb5 in this process reads it
                ccache = kdc.ticket(ADMIN)["KRB5CCNAME"]
                with httpx.Client(base_url=lab.local_url, trust_env=False, timeout=30) as plain:
                    doc = plain.get("/api/v1/openapi.json").json()
                    start = time.perf_counter()
                    for _ in range(300):
                        plain.get("/api/v1/health").raise_for_status()
                    health_rate = 300 / (time.perf_counter() - start)
                operations = sum(len(ops) for ops in doc["paths"].values())
                figures: dict[str, Any] = {"operations": operations,
                                           "baseline_health_per_second": round(health_rate, 1)}  # fmt: skip
                # Operations without inputs have one case only: the others get more, until the surface has CASES.
                per_operation = math.ceil(CASES / operations)
                rest, seconds = Report(), 0.0
                while rest.cases < CASES:
                    start = time.perf_counter()
                    more = fuzz_api(doc, lab.local_url, APPLIANCE_HOST, ccache, per_operation, tenants.objects,
                                    seed=rest.cases)  # fmt: skip
                    seconds += time.perf_counter() - start
                    rest.merge(more)
                    per_operation = max(10, math.ceil((CASES - rest.cases) / operations) * 2)
                figures["rest"] = _rate(rest, seconds)
                for surface in ("identify", "heartbeat"):
                    start = time.perf_counter()
                    report = fuzz_node(lab.node_url, kdc.root / "pki" / "ca.pem", CASES, surface)
                    figures[surface] = _rate(report, time.perf_counter() - start)
                for surface in ("rest", "identify", "heartbeat"):
                    figures[surface]["vs_health_rate"] = round(figures[surface]["per_second"] / health_rate, 4)
                figures["server_still_answers"] = httpx.get(f"{lab.local_url}/api/v1/health").status_code == 200
                figures["database_whole"] = _whole(lab.database_url)
                figures["server_errors"] = sum(figures[s]["server_errors"] for s in ("rest", "identify", "heartbeat"))
            finally:
                lab.stop()
        finally:
            kdc.process.terminate()
            kdc.process.wait(timeout=10)
    return figures
