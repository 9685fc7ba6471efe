"""The OpenAPI 3.1 document of the REST API, generated from the route table and the declared request types.

Nothing here is written by hand per route: the paths and methods come from the Starlette routes, the path
parameters from their converters, the query parameters and bodies from the pydantic models each handler
declared with appliance.api.schema.accepts (the same ones that validate the requests), and the
authentication from which paths are public. GET /api/v1/openapi.json serves it; GET /api/v1/docs shows it
as one readable page.
"""

from __future__ import annotations

import html
import inspect
import re
from collections.abc import Collection, Sequence
from typing import Any

from pydantic import BaseModel
from starlette.convertors import FloatConvertor, IntegerConvertor
from starlette.routing import BaseRoute, Route

from appliance.api.schema import declared

VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"{([^}:]+)(:[^}]+)?}")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error: what went wrong, how to fix it, and for a request that did not fit its "
    "declared type the field at fault.",
    "properties": {"error": {"type": "string"}, "hint": {"type": "string"}, "field": {"type": "string"}},
    "required": ["error", "hint"],
}


def _model_schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """A $ref to `model` in components, its nested models and enums hoisted beside it."""
    schema = model.model_json_schema(ref_template=REF, mode="validation")
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas.setdefault(model.__name__, schema)
    return {"$ref": REF.format(model=model.__name__)}


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF, mode="validation")
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    required = set(schema.get("required", []))
    params = []
    for name, declared_prop in schema.get("properties", {}).items():
        # An absent parameter is the null of `X | None`: a query string has no null to send.
        prop = declared_prop
        options = [p for p in prop.get("anyOf", []) if p != {"type": "null"}]
        if options:
            rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
            prop = {**rest, **options[0]} if len(options) == 1 else {**rest, "anyOf": options}
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def _path_parameters(route: Route, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    model = declared(route.endpoint).path
    declared_params = {p["name"]: p for p in _query_parameters(model, schemas)} if model else {}
    params = []
    for name, convertor in route.param_convertors.items():
        if name in declared_params:
            params.append({**declared_params[name], "in": "path", "required": True})
            continue
        if isinstance(convertor, IntegerConvertor):
            schema: dict[str, Any] = {"type": "integer", "minimum": 0}
        elif isinstance(convertor, FloatConvertor):
            schema = {"type": "number", "minimum": 0}
        else:
            schema = {"type": "string"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


def _summary(endpoint: Any, method: str, path: str) -> tuple[str, str]:
    doc = inspect.getdoc(endpoint) or ""
    lines = doc.splitlines()
    return (lines[0] if lines else f"{method} {path}"), doc


def _operation(route: Route, method: str, path: str, public: bool, schemas: dict[str, Any]) -> dict[str, Any]:
    endpoint = route.endpoint
    spec = declared(endpoint)
    summary, description = _summary(endpoint, method, path)
    op: dict[str, Any] = {
        "operationId": f"{endpoint.__name__}_{method.lower()}",
        "summary": summary,
        "tags": [endpoint.__module__.rpartition(".")[2]],
        "parameters": _path_parameters(route, schemas) + (_query_parameters(spec.query, schemas) if spec.query else []),
        "responses": {
            "2XX": {"description": "done", "content": {"application/json": {"schema": {"type": "object"}}}},
            "default": {
                "description": "refused or failed: 4xx with the reason (400 for a request that does not fit)",
                "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
            },
        },
    }
    if description and description != summary:
        op["description"] = description
    if spec.body is not None:
        op["requestBody"] = {
            "required": spec.body_required,
            "content": {"application/json": {"schema": _model_schema(spec.body, schemas)}},
        }
    elif spec.raw_body:
        binary = {"schema": {"type": "string", "format": "binary"}}
        op["requestBody"] = {"required": True, "content": {spec.raw_body: binary}}
    if public:
        op["security"] = []
    return op


def document(routes: Sequence[BaseRoute], public: Collection[str], *, version: str) -> dict[str, Any]:
    """The whole document for `routes` (Route entries only: mounted apps such as the web UI are not API)."""
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for route in routes:
        if not isinstance(route, Route):
            continue
        path = _PARAM.sub(r"{\1}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            op = _operation(route, method, path, route.path in public, schemas)
            if op["operationId"] in seen:  # one handler on two paths (a window, or all of them)
                op["operationId"] += f"_{len(seen)}"
            seen.add(op["operationId"])
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": VERSION,
        "info": {
            "title": "drover REST API",
            "version": version,
            "description": "Manage stateless hypervisor nodes, VMs, storage and users. Every call but the public "
            "ones needs a Kerberos ticket (HTTP Negotiate); errors are JSON with a reason.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"negotiate": {"type": "http", "scheme": "negotiate"}},
        },
        "security": [{"negotiate": []}],
    }


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rpartition("/")[2]
    if "enum" in schema:
        return " | ".join(str(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(_type_of(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_type_of(schema.get('items', {}))}"
    return str(schema.get("type", "any"))


def _limits(schema: dict[str, Any]) -> str:
    keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxLength", "minLength", "maxItems")
    return ", ".join(f"{k} {schema[k]}" for k in keys if k in schema)


def _fields_table(rows: list[tuple[str, str, bool, str]]) -> str:
    if not rows:
        return ""
    out = ["<table><tr><th>name</th><th>type</th><th>required</th><th>notes</th></tr>"]
    for name, typ, required, notes in rows:
        cells = (html.escape(name), html.escape(typ), "yes" if required else "", html.escape(notes))
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "".join(out) + "</table>"


def _schema_rows(schema: dict[str, Any]) -> list[tuple[str, str, bool, str]]:
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        notes = "; ".join(x for x in (prop.get("description", ""), _limits(prop),
                                      f"default {prop['default']!r}" if "default" in prop else "") if x)  # fmt: skip
        rows.append((name, _type_of(prop), name in required, notes))
    return rows


def reference(doc: dict[str, Any]) -> str:
    """The document as one HTML page: every operation with its parameters and body fields, then the types."""
    schemas = doc["components"]["schemas"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>drover REST API</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:70em}code{background:#eee;padding:0 .2em}"
        "table{border-collapse:collapse;margin:.3em 0 1em}"
        "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}"
        "h3{margin-bottom:.2em}</style></head><body>",
        f"<h1>{html.escape(doc['info']['title'])} {html.escape(doc['info']['version'])}</h1>",
        f"<p>{html.escape(doc['info']['description'])} Machine-readable: <a href='openapi.json'>openapi.json</a>.</p>",
    ]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            auth = "public" if op.get("security") == [] else "Kerberos"
            parts.append(f"<h3><code>{method.upper()} {html.escape(path)}</code> <small>({auth})</small></h3>")
            parts.append(f"<p>{html.escape(op.get('description', op['summary']))}</p>")
            params = [(p["name"], f"{p['in']}: {_type_of(p['schema'])}", p["required"], _limits(p["schema"]))
                      for p in op["parameters"]]  # fmt: skip
            parts.append(_fields_table(params))
            body = op.get("requestBody")
            if body:
                media, content = next(iter(body["content"].items()))
                name = _type_of(content["schema"])
                optional = "" if body["required"] else " (optional)"
                parts.append(f"<p>Body{optional}: <code>{html.escape(media)}</code> {html.escape(name)}</p>")
                if name in schemas:
                    parts.append(_fields_table(_schema_rows(schemas[name])))
    parts.append("<h2>Types</h2>")
    for name, schema in schemas.items():
        parts.append(f"<h3 id='{html.escape(name)}'>{html.escape(name)}</h3>")
        if "enum" in schema:
            parts.append(f"<p>one of: {html.escape(', '.join(map(str, schema['enum'])))}</p>")
        parts.append(_fields_table(_schema_rows(schema)))
    parts.append("</body></html>")
    return "\n".join(parts)
