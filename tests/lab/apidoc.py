"""Lab helper: walk the appliance's own OpenAPI document, so API tests cover every route without listing any.

`operations(doc)` yields each (method, path, operation); `example(schema, doc)` makes the smallest value a
schema accepts (required fields only), so a request gets past validation and meets the permission check.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    op: dict[str, Any]

    @property
    def public(self) -> bool:
        return self.op.get("security") == []

    @property
    def path_params(self) -> list[dict[str, Any]]:
        return [p for p in self.op.get("parameters", []) if p["in"] == "path"]

    @property
    def query_params(self) -> list[dict[str, Any]]:
        return [p for p in self.op.get("parameters", []) if p["in"] == "query"]

    @property
    def json_body(self) -> dict[str, Any] | None:
        body = self.op.get("requestBody")
        if body is None:
            return None
        schema = body["content"].get("application/json", {}).get("schema")
        return schema if isinstance(schema, dict) else None

    @property
    def body_required(self) -> bool:
        return bool(self.op.get("requestBody", {}).get("required"))

    @property
    def raw_body(self) -> bool:
        body = self.op.get("requestBody")
        return body is not None and "application/json" not in body["content"]

    def url(self, values: dict[str, str]) -> str:
        out = self.path
        for param in self.path_params:
            out = out.replace("{" + param["name"] + "}", values[param["name"]])
        return out

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path}"


def operations(doc: dict[str, Any]) -> Iterator[Operation]:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield Operation(method, path, op)


def resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][str(schema["$ref"]).rpartition("/")[2]]
    return schema


def example(schema: dict[str, Any], doc: dict[str, Any]) -> Any:
    """The smallest value `schema` accepts: required fields only, the first enum value, the lowest number."""
    schema = resolve(schema, doc)
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return example(schema["anyOf"][0], doc)
    kind = schema.get("type")
    if kind == "object":
        required = set(schema.get("required", []))
        return {k: example(v, doc) for k, v in schema.get("properties", {}).items() if k in required}
    if kind == "array":
        return []
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return 1.0 if schema.get("exclusiveMinimum", 0) < 1 else float(schema["exclusiveMinimum"]) + 1
    if kind == "boolean":
        return False
    if kind == "string":
        return "x"
    return None


def path_values(operation: Operation, doc: dict[str, Any], objects: dict[str, str]) -> list[dict[str, str]]:
    """Values for the path parameters, one dict per combination: `objects` by the name a route gives a
    parameter after its collection (`hosts.key` for /hosts/{key}, `vms.vm` for /vms/{vm}/snapshots, ...),
    and every value of a closed set (each VM verb)."""
    choices: list[list[tuple[str, str]]] = []
    for param in operation.path_params:
        name = param["name"]
        schema = resolve(param["schema"], doc)
        if "enum" in schema:
            choices.append([(name, str(v)) for v in schema["enum"]])
            continue
        segment = operation.path.split("{" + name + "}")[0].rstrip("/").rpartition("/")[2]
        choices.append([(name, objects.get(f"{segment}.{name}", objects.get(name, "1")))])
    return [dict(combo) for combo in itertools.product(*choices)]
