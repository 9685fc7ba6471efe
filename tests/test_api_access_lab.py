"""Every REST route refuses a caller without a ticket, and every caller without the right, against a real
`drover serve`: the routes come from the appliance's own OpenAPI document (generated from the route
table), never from a list kept here, so a route added tomorrow is checked tomorrow.

Callers: no ticket; a forged ticket; a principal with no role at all; a global monitor; alice, a plain user
of her own hardware pool. Every path parameter is one of bob's objects (bob: a plain user of another
pool), every body the smallest valid one, so each request reaches the permission check. A change (POST,
PUT, DELETE) must be refused with 403 or 404; a read must be refused or show none of bob's objects; and
nothing in the database may change. Bob himself reaching his objects shows the paths are real.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from appliance.db.engine import make_engine
from tests.lab.apidoc import Operation, example, operations, path_values, resolve
from tests.lab.appliance import LabAppliance, start_appliance
from tests.lab.fuzz import negotiate
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.lab.tenants import ALICE, BOB, Tenants, seed
from tests.test_api_openapi import everything

pytestmark = pytest.mark.lab

# The monitor runs (its TSDB answers the metrics routes); nothing else changes the database behind the test.
QUIET = {"DROVER_TASKENGINE_ENABLED": "false", "DROVER_HOSTBROWSER_ENABLED": "false", "DROVER_FENCING_ENABLED": "false"}
NOBODY, WATCHER = "sec-nobody", "sec-watcher"
CHANGES = {"post", "put", "delete", "patch"}


@dataclass
class Site:
    lab: LabAppliance
    db: Engine
    doc: dict[str, Any]
    tenants: Tenants
    tickets: dict[str, str]  # name -> ccache

    def call(self, who: str | None, operation: Operation, values: dict[str, str],
             authorization: str | None = None) -> httpx.Response:  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if who is not None:
            headers["Authorization"] = negotiate(APPLIANCE_HOST, self.tickets[who])
        elif authorization is not None:
            headers["Authorization"] = authorization
        body, query = request_parts(operation, self)
        return httpx.request(operation.method.upper(), f"{self.lab.local_url}{operation.url(values)}", headers=headers,
                             content=body, params=query, timeout=60, trust_env=False)  # fmt: skip


def request_parts(operation: Operation, site: Site) -> tuple[bytes | None, dict[str, str]]:
    """The smallest valid body and query, with values that point at bob's pool where a field names one."""
    overrides: dict[str, Any] = {"name": "secnew1", "principal": site.tenants.principal(BOB), "path": "/srv/secnew",
                                 "hardware_pool": "sec-b", "pool": "sec-b", "seconds": 60,
                                 "address": "127.0.0.1"}  # a BMC's: never one outside the lab  # fmt: skip
    query = {p["name"]: str(overrides.get(p["name"], example(p["schema"], site.doc)))
             for p in operation.query_params if p["required"]}  # fmt: skip
    schema = operation.json_body
    if schema is not None:
        props = resolve(schema, site.doc).get("properties", {})
        body = {**example(schema, site.doc), **{k: v for k, v in overrides.items() if k in props}}
        return json.dumps(body).encode(), query
    return (b"" if operation.raw_body else None), query


@pytest.fixture(scope="module")
def site(kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    lab = start_appliance(kdc, tmp_path_factory.mktemp("access"), timeout=120, settings=QUIET)
    assert lab.drover("user", "add", WATCHER, "--role", "monitor").returncode == 0
    db = make_engine(lab.database_url)
    tenants = seed(db, kdc.realm.name)
    doc = httpx.get(f"{lab.local_url}/api/v1/openapi.json", timeout=30).json()
    tickets = {name: kdc.ticket(name)["KRB5CCNAME"] for name in (NOBODY, WATCHER, ALICE, BOB)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
        yield Site(lab, db, doc, tenants, tickets)
    db.dispose()
    lab.stop()


def _every_request(site: Site) -> Iterator[tuple[Operation, dict[str, str]]]:
    for operation in operations(site.doc):
        for values in path_values(operation, site.doc, site.tenants.objects):
            yield operation, values


def test_every_route_refuses_a_request_without_a_valid_ticket(site: Site) -> None:
    before = everything(site.db)
    forged = "Negotiate " + base64.b64encode(os.urandom(200)).decode()
    wrong: list[str] = []
    checked = 0
    for operation, values in _every_request(site):
        if operation.public:
            continue
        for authorization in (None, forged, "Basic c2VjOnNlYw==", "Negotiate"):
            answer = site.call(None, operation, values, authorization)
            if answer.status_code != 401 or answer.headers.get("www-authenticate") != "Negotiate":
                wrong.append(f"{operation} {values} with {str(authorization)[:12]}: {answer.status_code} {answer.text}")
            checked += 1
    assert not wrong, "\n".join(wrong[:20])
    assert checked >= 4 * 40
    assert everything(site.db) == before


def _leaks(site: Site, text: str) -> list[str]:
    return [secret for secret in site.tenants.secrets if secret in text]


@pytest.mark.parametrize("who", [NOBODY, WATCHER, ALICE])
def test_every_route_refuses_each_caller_without_the_right(site: Site, who: str) -> None:
    before = everything(site.db)
    wrong: list[str] = []
    refused = reads = changes = 0
    for operation, values in _every_request(site):
        if operation.public:
            continue
        answer = site.call(who, operation, values)
        what = f"{operation} {values} as {who}: {answer.status_code} {answer.text[:300]}"
        if who == WATCHER and str(operation).endswith("/power/{action}") and values.get("action") == "status":
            # Asking a BMC for its power state is a monitor's read, sent as a POST (it talks to the BMC); the
            # lab hosts have no BMC, so the monitor is let through to "no power management" (409).
            if answer.status_code not in (403, 404, 409):
                wrong.append(what)
            reads += 1
        elif operation.method in CHANGES:
            changes += 1
            if answer.status_code not in (403, 404):
                wrong.append(what)
            refused += 1
        elif answer.status_code in (403, 404):
            refused += 1
        elif answer.status_code == 200:
            reads += 1
            # A monitor may read everything; anyone else may read only what is theirs or nobody's.
            if who != WATCHER and _leaks(site, answer.text):
                wrong.append(f"{what} shows {_leaks(site, answer.text)}")
        else:
            wrong.append(what)
    assert not wrong, "\n".join(wrong[:30])
    assert changes >= 30 and refused + reads >= 45
    assert everything(site.db) == before


def test_bobs_objects_are_reachable_by_bob_and_by_no_one_else(site: Site) -> None:
    """The other side of the test above: the same paths, as bob, do reach his objects (they are real paths)."""
    theirs = 0
    for operation, values in _every_request(site):
        if operation.public or operation.method != "get" or not values:
            continue
        as_bob, as_alice = site.call(BOB, operation, values), site.call(ALICE, operation, values)
        if as_bob.status_code == 200 and _leaks(site, as_bob.text):
            assert as_alice.status_code in (403, 404), f"{operation} {values}: {as_alice.status_code} {as_alice.text}"
            theirs += 1
    assert theirs >= 4  # his VM, its snapshots, his storage pool and its volumes
    vms = site.call(ALICE, next(o for o in operations(site.doc) if str(o) == "GET /api/v1/vms"), {})
    assert vms.status_code == 200 and "sec-vm-alice" in vms.text and not _leaks(site, vms.text)
