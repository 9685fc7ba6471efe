"""Fuzzing a real `drover serve`: every REST operation of its OpenAPI document (schemathesis, as an admin, so
requests reach the handlers), and the node service's identify and heartbeat (hypothesis, over HTTPS): no
5xx, no request without an answer, and a database that is whole afterwards.

DROVER_FUZZ_CASES sets the cases per REST operation (default 15) and DROVER_FUZZ_NODE_CASES the cases per
node surface (default 300); `make bench` section `fuzz` runs at least 10,000 per surface.
"""

from __future__ import annotations

import json
import os
import sqlite3
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from appliance.db import migrate
from appliance.db.engine import make_engine, session_scope
from appliance.db.models import Vm
from nodeagent import wire
from tests import test_enrolment
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.fuzz import NOT_FUZZED, fuzz_api, fuzz_authorization, fuzz_node
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.tenants import Tenants, seed

pytestmark = pytest.mark.lab

ADMIN = "sec-fuzzer"
API_CASES = int(os.environ.get("DROVER_FUZZ_CASES", "15"))
NODE_CASES = int(os.environ.get("DROVER_FUZZ_NODE_CASES", "300"))
# Host browser and task engine off: queued tasks stay queued, so the fuzzer's requests are all that changes
# the database. The monitor runs (the metrics routes query its TSDB); identify is not rate-limited here.
SETTINGS = {
    "DROVER_FENCING_ENABLED": "false",  # no fence of a fuzzed host through a BMC address a case made up
    "DROVER_TASKENGINE_ENABLED": "false",
    "DROVER_HOSTBROWSER_ENABLED": "false",
    "DROVER_NODES_IDENTIFY_PER_MINUTE": "0",
}


@dataclass
class Target:
    lab: LabAppliance
    url: str
    db: Engine
    doc: dict[str, Any]
    tenants: Tenants
    ccache: str


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The same fuzzing on both engines: PostgreSQL's narrower integers and stricter types fail differently."""
    settings = dict(SETTINGS)
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        name = f"fuzz_{uuid.uuid4().hex[:12]}"
        settings["DROVER_DATABASE_URL"] = server.create_database(name)
    lab = start_appliance(kdc, tmp_path_factory.mktemp("fuzz"), timeout=120, settings=settings)
    url = settings.get("DROVER_DATABASE_URL", lab.database_url)
    assert lab.drover("user", "add", ADMIN, "--role", "admin").returncode == 0
    db = make_engine(url)
    tenants = seed(db, kdc.realm.name)
    doc = httpx.get(f"{lab.local_url}/api/v1/openapi.json", timeout=30).json()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
        yield Target(lab, url, db, doc, tenants, kdc.ticket(ADMIN)["KRB5CCNAME"])
    db.dispose()
    lab.stop()
    if request.param == "postgresql":
        server.drop_database(name)


def assert_whole(target: Target) -> None:
    """The server still answers, and the database is consistent: no corruption, no dangling reference
    (PostgreSQL enforces its foreign keys itself; SQLite is asked to check them)."""
    assert httpx.get(f"{target.lab.local_url}/api/v1/health", timeout=30).status_code == 200
    if target.url.startswith("sqlite:///"):
        with sqlite3.connect(target.url.removeprefix("sqlite:///")) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    with session_scope(target.db) as s:
        assert list(s.scalars(text("SELECT version_num FROM alembic_version"))) == [migrate.head()]
        assert s.scalar(select(func.count()).select_from(Vm).where(Vm.name == "sec-vm-bob")) == 1


def test_every_rest_operation_fuzzed_answers_without_a_server_error(target: Target) -> None:
    report = fuzz_api(target.doc, target.lab.local_url, APPLIANCE_HOST, target.ccache, API_CASES,
                      target.tenants.objects)  # fmt: skip
    print("rest fuzz:", report.summary())
    assert report.server_errors == 0, "\n".join(report.failures)
    operations = sum(len(ops) for ops in target.doc["paths"].values()) - len(NOT_FUZZED)
    assert len(report.per_operation) == operations  # every operation got cases (but those never fuzzed)
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


def test_counts_past_a_32_bit_column_are_refused_not_a_server_error(target: Target) -> None:
    """A CPU count of 2^40 fit the wire format's 63 bits but not PostgreSQL's INTEGER column: a 500 there."""
    facts = wire.to_dict(test_enrolment.facts(str(uuid.uuid4()), "big1.fuzz.test"))
    facts["cpu"]["count"] = 2**40
    body = json.dumps({"token": "", "facts": facts}).encode()
    verify = ssl.create_default_context(cafile=str(target.lab.kdc.root / "pki" / "ca.pem"))
    answer = httpx.post(f"{target.lab.node_url}/node/v1/identify", content=body, verify=verify, timeout=30)
    assert answer.status_code == 400 and "facts.cpu.count: more than 2147483647" in answer.json()["error"], answer.text
    assert_whole(target)
