"""Lab helper: fuzz a real `drover serve` and count what came back.

- `fuzz_api`: every operation of the appliance's own OpenAPI document, with schemathesis generating cases
  that fit the declared types and cases that break them, against random path values and, for half of
  them, the keys of real objects (so requests get past the lookups into the handlers). Each request
  carries a fresh Kerberos Negotiate token of `principal`.
- `fuzz_node`: the node service's identify and heartbeat (nodeagent/wire.py) with hypothesis: messages of
  the right shape with wrong, odd or extreme values, broken JSON, and random bytes.

A response of 500 or more, or a request that gets no answer at all, is a failure; everything else (4xx
refusals) is what a fuzzer should get. The caller asserts on the returned report.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gssapi
import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.lab.apidoc import operations, path_values

SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
FAILURES_KEPT = 20


@dataclass
class Report:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    per_operation: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Report) -> None:
        self.cases += other.cases
        self.statuses.update(other.statuses)
        self.per_operation.update(other.per_operation)
        self.failures.extend(other.failures[: FAILURES_KEPT - len(self.failures)])

    def record(self, what: str, status: int, detail: str) -> None:
        self.cases += 1
        self.statuses[status] += 1
        self.per_operation[what] += 1
        if (status >= 500 or status == 0) and len(self.failures) < FAILURES_KEPT:
            self.failures.append(f"{what}: {status} {detail[:600]}")

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500 or status == 0)

    def summary(self) -> dict[str, Any]:
        return {"cases": self.cases, "server_errors": self.server_errors,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}  # fmt: skip


def negotiate(service_host: str, ccache: str) -> str:
    """A fresh Authorization header for HTTP/service_host from `ccache` (KRB5_CONFIG from the environment)."""
    name = gssapi.Name(f"HTTP@{service_host}", gssapi.NameType.hostbased_service)
    creds = gssapi.Credentials(usage="initiate", store={"ccache": ccache})
    ctx = gssapi.SecurityContext(name=name, creds=creds, usage="initiate", mech=SPNEGO)
    return "Negotiate " + base64.b64encode(ctx.step() or b"").decode("ascii")


def _settings(cases: int, seed: int | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Without a seed the same cases on every run (a failure found once is found again); a seed gives others."""
    chosen = settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=seed is None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    if seed is None:
        return chosen

    def seeded(test: Callable[..., None]) -> Callable[..., None]:
        return hypothesis_seed(seed)(chosen(test))

    return seeded


# Operations whose success makes the appliance send packets to an address taken from the request (a host's
# BMC): fuzzed, a valid case would aim ipmitool at a random address outside the lab. Their input checks are
# covered by test_api_openapi (every field sent wrong) and their behaviour by tests/test_fencing_*.
# Opening an enrolment window with a BMC only stores its address (fuzzed as any body); powering the window's
# machine would send to it, so that operation is left out too.
NOT_FUZZED = frozenset({"PUT /api/v1/hosts/{key}/power", "POST /api/v1/enrolment/windows/{id}/power/{action}"})


def fuzz_api(
    doc: dict[str, Any],
    base_url: str,
    service_host: str,
    ccache: str,
    cases_per_operation: int,
    objects: dict[str, str],
    seed: int | None = None,
) -> Report:
    """Run about `cases_per_operation` cases against every operation of `doc`; half use real object keys."""
    # Without the security declarations: every case carries a real ticket, so it gets past authentication
    # into the handlers (random Authorization headers are fuzz_authorization's).
    schema = schemathesis.openapi.from_dict({**doc, "security": [],
                                             "components": {**doc["components"], "securitySchemes": {}}})  # fmt: skip
    report = Report()
    session = requests.Session()
    session.trust_env = False
    by_label = {str(o): o for o in operations(doc)}
    for result in schema.get_all_operations():
        api_op = result.ok()  # type: ignore[union-attr]  # an invalid operation raises here, failing the test
        label = f"{api_op.method.upper()} {api_op.path}"
        if label in NOT_FUZZED:
            continue
        fixed = {k: v for k, v in path_values(by_label[label], doc, objects)[0].items()
                 if not _is_enum(by_label[label], k)}  # fmt: skip
        strategies = []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for params in ({}, fixed) if fixed else ({},):
                try:
                    strategies.append(api_op.as_strategy(generation_mode=mode, path_parameters=params or None))
                except Exception:  # nothing to break in this mode (an operation with no inputs)
                    continue

        _run_cases(label, st.one_of(strategies), cases_per_operation, seed, report,
                   lambda case: case.call(base_url=base_url, session=session, timeout=60,
                                          headers={"Authorization": negotiate(service_host, ccache)}))  # fmt: skip
    session.close()
    return report


def _run_cases(
    label: str, strategy: st.SearchStrategy[Any], cases: int, seed: int | None, report: Report, call: Any
) -> None:
    @_settings(cases, seed)
    @given(case=strategy)
    def run(case: Any) -> None:
        try:
            response = call(case)
        except requests.RequestException as exc:
            report.record(label, 0, f"no answer: {exc} for {case.path_parameters} {case.query} {case.body!r}")
            return
        detail = f"{response.text} <- path {case.path_parameters} query {case.query} body {case.body!r}"
        report.record(label, response.status_code, detail)

    run()


def _is_enum(operation: Any, name: str) -> bool:
    return any(p["name"] == name and "$ref" in p["schema"] for p in operation.path_params)


# -- the node service ---------------------------------------------------------------------------------------

_JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=80),
)  # fmt: skip
_JSON = st.recursive(_JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                     max_leaves=12)  # fmt: skip
_ODD_TEXT = st.one_of(st.text(max_size=300), st.sampled_from(["", " ", "\x00", "²", "../../etc/passwd", "A" * 5000]))


def _maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a good value (so a message often gets past decoding into enrolment), sometimes any JSON value
    or odd text in its place."""
    return _weighted(good, 30, st.one_of(_JSON, _ODD_TEXT))


def _weighted(common: st.SearchStrategy[Any], times: int, rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`common` about `times` times as often as `rare` (one_of drops repeats of one strategy, so distinct copies)."""
    return st.one_of([common.map(lambda x: x) for _ in range(times)] + [rare])


# What a real agent sends: printable text and counts a machine can have (the odd values come from _maybe).
_WORD = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_categories=["Cc"]),
                max_size=40)  # fmt: skip


def _count(top: int = 2**62) -> st.SearchStrategy[int]:
    return st.integers(0, top)


def _uuid() -> st.SearchStrategy[Any]:
    return _maybe(st.uuids().map(str))


def _mac() -> st.SearchStrategy[Any]:
    return _maybe(st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)))


def _facts() -> st.SearchStrategy[dict[str, Any]]:
    cpu = st.fixed_dictionaries({
        "model": _maybe(_WORD), "count": _maybe(st.integers(1, 512)),
        "cores": _maybe(st.integers(1, 512)), "sockets": _maybe(st.integers(1, 8)),
        "flags": _maybe(st.lists(_WORD, max_size=5)),
    })  # fmt: skip
    nic = st.fixed_dictionaries({"name": _maybe(_WORD), "mac": _mac()},
                                optional={"speed_mbps": _maybe(_count(10**6)), "boot": _maybe(st.booleans()),
                                          "addresses": _maybe(st.lists(_WORD, max_size=3))})  # fmt: skip
    disk = st.fixed_dictionaries({"name": _maybe(_WORD), "size_bytes": _maybe(_count())})
    host = st.from_regex(r"[a-z]([a-z0-9-]{0,18}[a-z0-9])?", fullmatch=True)
    return st.fixed_dictionaries(
        {"uuid": _uuid(), "hostname": _maybe(host), "fqdn": _maybe(host.map(lambda h: f"{h}.fuzz.test")),
         "arch": _maybe(st.just("x86_64")), "kernel": _maybe(_WORD),
         "memory_bytes": _maybe(_count()), "cpu": _maybe(cpu)},
        optional={"nics": _maybe(st.lists(nic, max_size=3)), "disks": _maybe(st.lists(disk, max_size=3)),
                  "boot_mac": _mac(), "agent_version": _maybe(_WORD)},
    )  # fmt: skip


def _identify() -> st.SearchStrategy[Any]:
    message = st.fixed_dictionaries({"token": _maybe(_WORD), "facts": _maybe(_facts())},
                                    optional={"version": _maybe(st.integers(0, 3))})  # fmt: skip
    extra = st.fixed_dictionaries({"token": st.text(max_size=8), "facts": _facts(), "extra": _JSON})
    return _weighted(message, 8, st.one_of(extra, _JSON, st.binary(max_size=400)))


def _heartbeat() -> st.SearchStrategy[Any]:
    message = st.fixed_dictionaries(
        {"uuid": _uuid()},
        optional={"libvirt_ready": _maybe(st.booleans()), "has_credentials": _maybe(st.booleans()),
                  "uptime_seconds": _maybe(_count()), "version": _maybe(st.integers(0, 3)),
                  "agent_token": _maybe(_WORD)},
    )  # fmt: skip
    return _weighted(message, 8, st.one_of(_JSON, st.binary(max_size=400)))


def fuzz_node(node_url: str, ca_file: Path, cases: int, surface: str) -> Report:
    """`cases` requests to identify or heartbeat over HTTPS (the appliance's CA verified)."""
    report = Report()
    strategy = _identify() if surface == "identify" else _heartbeat()
    verify = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(base_url=node_url, verify=verify, trust_env=False, timeout=60) as http:

        @_settings(cases)
        @given(message=strategy)
        def run(message: Any) -> None:
            body = message if isinstance(message, bytes) else json.dumps(message).encode()
            try:
                response = http.post(f"/node/v1/{surface}", content=body, headers={"Content-Type": "application/json"})
            except httpx.TransportError as exc:
                report.record(surface, 0, f"no answer: {exc} for {body[:300]!r}")
                return
            report.record(surface, response.status_code, f"{response.text} <- {body[:300]!r}")

        run()
    return report


_TOKEN = st.one_of(
    st.binary(max_size=3000).map(lambda b: "Negotiate " + base64.b64encode(b).decode()),
    st.text(max_size=200).map(lambda t: "Negotiate " + t),
    st.text(max_size=200),
    st.sampled_from(["Negotiate", "Negotiate ", "Basic Og==", "Negotiate " + "A" * 20000, "negotiate YII="]),
)


def fuzz_authorization(base_url: str, paths: list[str], cases: int) -> Report:
    """Random Authorization headers (forged SPNEGO tokens, junk, other schemes) on Kerberos-only paths."""
    report = Report()
    with httpx.Client(base_url=base_url, trust_env=False, timeout=60) as http:

        @_settings(cases)
        @given(header=_TOKEN, path=st.sampled_from(paths))
        def run(header: str, path: str) -> None:
            try:
                response = http.get(path, headers={"Authorization": header})
            except (httpx.LocalProtocolError, UnicodeEncodeError):
                return  # not sendable as an HTTP header at all (a control character, a trailing space)
            except httpx.TransportError as exc:
                report.record("authorization", 0, f"no answer: {exc} for {header[:200]!r}")
                return
            report.record("authorization", response.status_code, f"{response.text} <- {header[:200]!r}")

        run()
    return report
