"""Fuzzing a real `drover serve`: every REST operation of its OpenAPI document (schemathesis, as an admin, so
requests reach the handlers), and the node service's identify and heartbeat (hypothesis, over HTTPS): no
5xx, no request without an answer, and a database that is whole afterwards.

DROVER_FUZZ_CASES sets the cases per REST operation (default 15) and DROVER_FUZZ_NODE_CASES the cases per
node surface (default 300); `make bench` section `fuzz` runs at least 10,000 per surface.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Vm
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.fuzz import fuzz_api, fuzz_authorization, fuzz_node
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.tenants import Tenants, seed

pytestmark = pytest.mark.lab

ADMIN = "sec-fuzzer"
API_CASES = int(os.environ.get("DROVER_FUZZ_CASES", "15"))
NODE_CASES = int(os.environ.get("DROVER_FUZZ_NODE_CASES", "300"))
# Host browser and task engine off: queued tasks stay queued, so the fuzzer's requests are all that changes
# the database. The monitor runs (the metrics routes query its TSDB); identify is not rate-limited here.
SETTINGS = {
    "DROVER_TASKENGINE_ENABLED": "false",
    "DROVER_HOSTBROWSER_ENABLED": "false",
    "DROVER_NODES_IDENTIFY_PER_MINUTE": "0",
}


@dataclass
class Target:
    lab: LabAppliance
    db: Engine
    doc: dict[str, Any]
    tenants: Tenants
    ccache: str


@pytest.fixture(scope="module")
def target(kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    lab = start_appliance(kdc, tmp_path_factory.mktemp("fuzz"), timeout=120, settings=SETTINGS)
    assert lab.drover("user", "add", ADMIN, "--role", "admin").returncode == 0
    db = make_engine(lab.database_url)
    tenants = seed(db, kdc.realm.name)
    doc = httpx.get(f"{lab.local_url}/api/v1/openapi.json", timeout=30).json()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
        yield Target(lab, db, doc, tenants, kdc.ticket(ADMIN)["KRB5CCNAME"])
    db.dispose()
    lab.stop()


def assert_whole(target: Target) -> None:
    """The server still answers, and the database file is consistent: no corruption, no dangling reference."""
    assert httpx.get(f"{target.lab.local_url}/api/v1/health", timeout=30).status_code == 200
    path = target.lab.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0007",)]
    with session_scope(target.db) as s:
        assert s.scalar(select(func.count()).select_from(Vm).where(Vm.name == "sec-vm-bob")) == 1


def test_every_rest_operation_fuzzed_answers_without_a_server_error(target: Target) -> None:
    report = fuzz_api(target.doc, target.lab.local_url, APPLIANCE_HOST, target.ccache, API_CASES,
                      target.tenants.objects)  # fmt: skip
    print("rest fuzz:", report.summary())
    assert report.server_errors == 0, "\n".join(report.failures)
    operations = sum(len(ops) for ops in target.doc["paths"].values())
    assert len(report.per_operation) == operations  # every operation got cases
    assert report.cases >= operations * min(API_CASES, 3)  # an operation without inputs has one case
    # The cases went deep: refusals of every kind and accepted requests, not one 404 over and over.
    assert {400, 404}.issubset(report.statuses) and any(200 <= s < 300 for s in report.statuses)
    assert_whole(target)


@pytest.mark.parametrize("surface", ["identify", "heartbeat"])
def test_identify_and_heartbeat_fuzzed_answer_without_a_server_error(target: Target, surface: str) -> None:
    report = fuzz_node(target.lab.node_url, target.lab.kdc.root / "pki" / "ca.pem", NODE_CASES, surface)
    print(f"{surface} fuzz:", report.summary())
    assert report.server_errors == 0, "\n".join(report.failures)
    assert report.cases >= NODE_CASES * 0.9
    assert 400 in report.statuses
    assert_whole(target)


def test_random_authorization_headers_are_401_never_a_server_error(target: Target) -> None:
    paths = ["/api/v1/whoami", "/api/v1/vms", "/api/v1/hosts", "/api/v1/tasks"]
    report = fuzz_authorization(target.lab.local_url, paths, NODE_CASES)
    print("authorization fuzz:", report.summary())
    assert report.server_errors == 0, "\n".join(report.failures)
    # 401 for every token; 400 only where uvicorn refuses the header itself (over its size limit)
    assert set(report.statuses) <= {400, 401} and report.statuses[401] >= NODE_CASES * 0.3
    assert_whole(target)
