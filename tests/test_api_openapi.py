"""The OpenAPI document against a real `drover serve`: every route of the app is in it, it is a valid OpenAPI
3.1 document, and a request that does not fit its declared type is a 400 naming the field, changing nothing,
for every operation the document lists (walked, not listed here)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from sqlalchemy import Engine, select
from starlette.routing import Mount, Route

from appliance.api import create_app
from appliance.client import Client
from appliance.db.base import Base
from appliance.db.engine import make_engine, session_scope
from tests.lab.apidoc import Operation, example, operations, path_values, resolve
from tests.lab.appliance import ADMIN, LabAppliance, start_appliance
from tests.lab.kdc import APPLIANCE_HOST, LabKdc
from tests.test_enrolment import lab_config

pytestmark = pytest.mark.lab

QUIET = {
    "DROVER_TASKENGINE_ENABLED": "false",
    "DROVER_HOSTBROWSER_ENABLED": "false",
    "DROVER_MONITOR_ENABLED": "false",
}


def everything(db: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what a refused request must leave exactly as it was."""
    with session_scope(db) as s:
        return {
            t.name: [tuple(r) for r in s.execute(select(t).order_by(*t.primary_key.columns)).all()]
            for t in Base.metadata.sorted_tables
            if t.name != "leases"  # the running fencer's lease, renewed every few seconds whatever is asked
        }


@dataclass
class Served:
    lab: LabAppliance
    db: Engine
    admin: httpx.Client
    doc: dict[str, Any]


@pytest.fixture(scope="module")
def served(kdc: LabKdc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    lab = start_appliance(kdc, tmp_path_factory.mktemp("openapi"), timeout=120, settings=QUIET)
    assert lab.drover("user", "add", ADMIN, "--role", "admin").returncode == 0
    db = make_engine(lab.database_url)
    doc = httpx.get(f"{lab.local_url}/api/v1/openapi.json", timeout=30).json()  # public: no ticket
    with (
        pytest.MonkeyPatch.context() as mp,
        Client(lab.local_url, service_host=APPLIANCE_HOST, ccache=kdc.ticket(ADMIN)["KRB5CCNAME"]) as admin,
    ):
        mp.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
        yield Served(lab, db, admin._http, doc)
    db.dispose()
    lab.stop()


def _app_operations(kdc: LabKdc, tmp: Path) -> set[str]:
    """METHOD path of every route the app built by create_app() has, the web UI's mount aside."""
    cfg = lab_config(kdc, tmp / "unused.db")
    engine = make_engine(cfg.database_url)
    try:
        app = create_app(cfg, engine=engine)
    finally:
        engine.dispose()
    found, other = set(), []
    for route in app.routes:
        if isinstance(route, Route) and route.path != "/":
            path = re.sub(r"{([^}:]+)(:[^}]+)?}", r"{\1}", route.path)
            found |= {f"{m} {path}" for m in (route.methods or set()) - {"HEAD"}}
        else:
            other.append(route)
    # Only the web UI (its own pages, not API), the / redirect to it and the console WebSocket (OpenAPI has no
    # WebSocket operations; POST /vms/{key}/console, which hands out its ticket, is documented) are left out.
    left = sorted(type(r).__name__ + ":" + getattr(r, "path", "") for r in other)
    assert left == ["Mount:/ui", "Route:/", "WebSocketRoute:/api/v1/vms/{id}/console/{kind}"], left
    assert any(isinstance(r, Mount) for r in other)
    return found


def test_every_route_of_the_app_is_in_the_document_and_it_validates(served: Served, tmp_path: Path) -> None:
    validate(served.doc)  # raises with the first problem
    assert served.doc["openapi"] == "3.1.0"
    documented = {str(o) for o in operations(served.doc)}
    assert documented == _app_operations(served.lab.kdc, tmp_path)
    assert len(documented) >= 40
    public = {str(o) for o in operations(served.doc) if o.public}
    assert public == {"GET /api/v1/health", "GET /metrics", "GET /api/v1/openapi.json", "GET /api/v1/docs"}
    # The request types are in it: bodies with their fields, query parameters with their bounds.
    schemas = served.doc["components"]["schemas"]
    assert {"name", "capacity_bytes", "format"} <= set(schemas["VolumeRequest"]["properties"])
    assert schemas["VolumeRequest"]["additionalProperties"] is False
    tasks = next(o for o in operations(served.doc) if str(o) == "GET /api/v1/tasks")
    limit = next(p for p in tasks.query_params if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 10000 and not limit["required"]
    verbs = resolve(next(p for p in next(o for o in operations(served.doc) if str(o) == "POST /api/v1/vms/{key}/{verb}")
                         .path_params if p["name"] == "verb")["schema"], served.doc)  # fmt: skip
    assert {"start", "migrate", "delete"} <= set(verbs["enum"])


def test_the_reference_page_shows_every_operation(served: Served) -> None:
    page = httpx.get(f"{served.lab.local_url}/api/v1/docs", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for operation in operations(served.doc):
        assert f"<code>{operation.method.upper()} {operation.path}</code>" in page.text, operation
    assert "capacity_bytes" in page.text and "VmRequest" in page.text


def _refused(served: Served, operation: Operation, *, body: Any = None, query: dict[str, str] | None = None) -> Any:
    for values in path_values(operation, served.doc, {}):
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if content is not None else {}
        answer = served.admin.request(operation.method.upper(), operation.url(values), content=content,
                                      params=query, headers=headers)  # fmt: skip
        assert answer.status_code == 400, f"{operation} {values}: {answer.status_code} {answer.text}"
        return answer.json()
    raise AssertionError(operation)


def test_a_request_that_does_not_fit_its_type_is_a_400_naming_the_field(served: Served) -> None:
    before = everything(served.db)
    checked = 0
    for operation in operations(served.doc):
        schema = operation.json_body
        if schema is not None:
            good = example(schema, served.doc)
            answer = _refused(served, operation, body={**good, "zz_unknown": 1})
            assert answer == {"error": "zz_unknown: unknown field", "hint": answer["hint"], "field": "zz_unknown"}
            assert answer["hint"].startswith("fields: ")
            for name, prop in resolve(schema, served.doc).get("properties", {}).items():
                wrong: Any = [] if resolve(prop, served.doc).get("type") != "array" else "not a list"
                answer = _refused(served, operation, body={**good, name: wrong})
                assert answer["field"] == name and answer["error"].startswith(f"{name}: "), (operation, answer)
                checked += 1
            answer = _refused(served, operation, body=[good])
            assert "JSON object" in answer["error"] and "field" not in answer
        needed = {p["name"]: str(example(p["schema"], served.doc)) for p in operation.query_params if p["required"]}
        for param in operation.query_params:
            answer = _refused(served, operation, query={**needed, "zz_unknown": "1"})
            assert answer["field"] == "zz_unknown" and answer["error"] == "zz_unknown: unknown query parameter"
            typed = resolve(param["schema"], served.doc)
            if typed.get("type") in ("integer", "boolean") or "enum" in typed:
                # "²": str.isdigit() says yes, int() says no
                answer = _refused(served, operation, query={**needed, param["name"]: "\u00b2"})
                assert answer["field"] == param["name"], (operation, answer)
                checked += 1
    assert checked >= 60
    assert everything(served.db) == before


def test_a_missing_required_field_and_an_out_of_range_value_name_the_field(served: Served) -> None:
    before = everything(served.db)
    volumes = next(o for o in operations(served.doc) if str(o) == "POST /api/v1/storage/pools/{pool}/volumes")
    assert _refused(served, volumes, body={"name": "v"}) == {
        "error": "capacity_bytes: required", "hint": "fields: name, capacity_bytes, format", "field": "capacity_bytes"
    }  # fmt: skip
    answer = _refused(served, volumes, body={"name": "v", "capacity_bytes": 0, "format": "vmdk"})
    assert answer["error"] == "capacity_bytes: must be greater than or equal to 1"
    assert answer["hint"].endswith("(1 more problem)")
    create = next(o for o in operations(served.doc) if str(o) == "POST /api/v1/vms")
    answer = _refused(served, create, body={"name": "a", "disks": [{"volume": "one"}]})
    assert answer["field"] == "disks[0].volume" and answer["error"] == "disks[0].volume: must be an integer"
    answer = _refused(served, create, body={"name": "a", "vcpus": True})
    assert answer["error"] == "vcpus: must be an integer"
    # Found by the fuzzer: an id past BIGINT in a body overflowed in the database (a 500 from balance).
    balance = next(o for o in operations(served.doc) if str(o) == "POST /api/v1/cluster/balance")
    assert _refused(served, balance, body={"cluster": 10**25})["field"] == "cluster"
    assert _refused(served, create, body={"name": "a", "disks": [{"volume": 2**63}]})["field"] == "disks[0].volume"
    windows = next(o for o in operations(served.doc) if str(o) == "POST /api/v1/enrolment/windows")
    # A window of 10^20 seconds overflowed timedelta (a 500) before the bounds were declared.
    assert "must last from 1 second to" in _refused(served, windows, body={"seconds": 10**20})["error"]
    assert "must last from 1 second to" in _refused(served, windows, body={"seconds": -(10**20)})["error"]
    # Found by the fuzzer: an id past BIGINT in a body overflowed in the database (a 500 from balance).
    balance = next(o for o in operations(served.doc) if str(o) == "POST /api/v1/cluster/balance")
    assert _refused(served, balance, body={"cluster": 10**25})["field"] == "cluster"
    assert _refused(served, create, body={"name": "a", "disks": [{"volume": 2**63}]})["field"] == "disks[0].volume"
    tasks = next(o for o in operations(served.doc) if str(o) == "GET /api/v1/tasks")
    assert _refused(served, tasks, query={"state": "sleeping"})["error"].startswith("state: 'sleeping' is not queued")
    action = next(o for o in operations(served.doc) if str(o) == "POST /api/v1/vms/{key}/{verb}")
    assert action.body_required is False
    answer = _refused(served, action, body={"timeout": 0})
    assert answer["field"] == "timeout" and "greater than or equal to 1" in answer["error"]
    assert everything(served.db) == before


def test_ids_beyond_what_a_database_holds_are_not_found_not_a_crash(served: Served) -> None:
    """Found by the fuzzer: a path id past BIGINT overflowed in the database (500); '²' passes str.isdigit()."""
    before = everything(served.db)
    huge = "9" * 30
    for method, path, status in (
        ("DELETE", f"/api/v1/enrolment/windows/{huge}", 404),
        ("GET", f"/api/v1/tasks/{huge}", 400),
        ("GET", "/api/v1/tasks/\u00b2", 400),
        ("GET", f"/api/v1/vms/{huge}", 404),
        ("GET", "/api/v1/vms/\u00b2", 404),
        ("GET", f"/api/v1/hosts/{huge}", 404),
        ("GET", f"/api/v1/storage/pools/{huge}", 404),
        ("DELETE", f"/api/v1/templates/{huge}", 404),
    ):
        answer = served.admin.request(method, path)
        assert answer.status_code == status, (path, answer.text)
    assert everything(served.db) == before
