"""Declared request types: a handler says what body and query it takes, as pydantic models, and gets them parsed.

`@accepts(body=M, query=Q)` turns `handler(request, body=..., query=...)` into a Starlette endpoint that
refuses a bad request with one 400 before the handler (or anything else) runs, in the API's one error
shape plus the field at fault: {"error": "<field>: <reason>", "hint": ..., "field": "<field>"}. The same
declarations feed the OpenAPI document (appliance.api.openapi), so the document cannot drift from what
is enforced. Deeper checks that need the database (a name taken, a pool that does not exist) stay in
the domain functions, which every caller (API, web UI, CLI) goes through.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from appliance.api.edge import read_json
from appliance.errors import UsageError
from appliance.text import MAX_ID

# A row id: what the id columns hold (a larger one would overflow in the query, not find nothing).
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class Body(BaseModel):
    """A JSON request body: exactly these fields, JSON's own types (no "5" for 5, no 1 for true)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def given(self) -> dict[str, Any]:
        """The fields the client sent, as plain JSON values (what the domain functions take)."""
        return self.model_dump(mode="json", exclude_unset=True)


class Query(BaseModel):
    """Query parameters: exactly these names; values arrive as text and are converted ("5" -> 5, "true")."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Empty(Body):
    """No fields at all: the body of an action that takes none (an empty body is fine too)."""


class InvalidField(UsageError):
    """A request that does not fit its declared type: 400 naming the field."""

    def __init__(self, message: str, hint: str = "", *, field: str = "") -> None:
        super().__init__(message, hint)
        self.field = field


Handler = Callable[..., Awaitable[Response] | Response]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Declared:
    body: type[Body] | None = None
    query: type[Query] | None = None
    body_required: bool = True
    raw_body: str = ""  # a media type: the body is a file's bytes, streamed by the handler itself
    # Path parameters narrower than "any text" (a closed set of verbs): documented here, checked by the handler
    # after it found the object, so a missing object is still a 404 whatever the rest of the path says.
    path: type[Query] | None = None


ATTRIBUTE = "__drover_declared__"
B = TypeVar("B", bound=Body)
Q = TypeVar("Q", bound=Query)


def declared(endpoint: Any) -> Declared:
    """What a route's endpoint declared (nothing, for one without @accepts)."""
    found = getattr(endpoint, ATTRIBUTE, None)
    return found if isinstance(found, Declared) else Declared()


def accepts(
    *,
    body: type[Body] | None = None,
    query: type[Query] | None = None,
    optional_body: bool = False,
    raw_body: str = "",
    path: type[Query] | None = None,
) -> Callable[[Handler], Endpoint]:
    """Parse and check the body and query before `handler` runs; a plain (sync) handler runs in the thread pool.

    `optional_body`: no body at all (or only whitespace) is the model with its defaults.
    `raw_body`: not parsed here, only documented (the handler streams it, e.g. a disk image).
    """
    spec = Declared(body, query, not optional_body, raw_body, path)

    def wrap(handler: Handler) -> Endpoint:
        is_async = inspect.iscoroutinefunction(handler)

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            kwargs: dict[str, Any] = {}
            if query is not None:
                kwargs["query"] = parse_query(request, query)
            if body is not None:
                kwargs["body"] = await parse_body(request, body, required=not optional_body)
            if is_async:
                return await handler(request, **kwargs)  # type: ignore[no-any-return,misc]
            result = await run_in_threadpool(handler, request, **kwargs)
            if not isinstance(result, Response):
                raise TypeError(f"{handler.__qualname__} returned {type(result).__name__}, not a Response")
            return result

        setattr(endpoint, ATTRIBUTE, spec)
        return endpoint

    return wrap


async def parse_body(request: Request, model: type[B], *, required: bool = True) -> B:
    raw = await request.body()
    if not required and not raw.strip():
        return model()
    await read_json(request)  # not JSON, not an object, nested too deep: the API's usual 400 first
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid(exc, model, "field") from None


def parse_query(request: Request, model: type[Q]) -> Q:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise invalid(exc, model, "query parameter") from None


# Where a value may be one of several types, pydantic adds the member it tried to the location: not a field.
_MEMBERS = frozenset({"int", "str", "float", "bool", "none", "list", "dict"})


def _is_member(part: int | str) -> bool:
    return isinstance(part, str) and (part in _MEMBERS or "[" in part or part.startswith("constrained"))


def _field_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    return tuple(p for p in loc if not _is_member(p))


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in _field_loc(loc):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


_TYPES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "float_type": "a number",
    "float_parsing": "a number",
    "list_type": "a list",
    "model_type": "an object",
    "dict_type": "an object",
    "none_required": "null",
}


def _reason(error: ErrorDetails, kind: str) -> str:
    typ, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    if typ == "extra_forbidden":
        return f"unknown {kind}"
    if typ == "missing":
        return "required"
    if typ in ("enum", "literal_error"):
        expected = str(ctx.get("expected", "")).replace("'", "")
        return f"{given!r} is not {expected}"
    if typ == "string_pattern_mismatch":
        return f"{given!r} is not valid (must match {ctx.get('pattern')})"
    if typ == "bool_parsing":
        return f"{given!r} is not true or false"
    if typ in _TYPES:
        return f"must be {_TYPES[typ]}"
    if typ in ("string_too_long", "too_long"):
        unit = "characters" if typ == "string_too_long" else "items"
        return f"must be at most {ctx.get('max_length')} {unit}"
    text = str(error["msg"])
    if text.startswith("Input should be "):
        text = "must be " + text.removeprefix("Input should be ")
    elif text:
        text = text[0].lower() + text[1:]
    return text


def invalid(exc: ValidationError, model: type[BaseModel], kind: str) -> InvalidField:
    """The first problem as `<field>: <reason>`; the hint lists the fields the request may have."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = _where(tuple(first["loc"]))
    # One value tried against each type of a union: one reason naming them all ("an integer or a string").
    same = [e for e in errors if _where(tuple(e["loc"])) == field]
    if len(same) > 1 and all(e["type"] in _TYPES for e in same):
        kinds = list(dict.fromkeys(_TYPES[e["type"]] for e in same))
        reason = "must be " + " or ".join(kinds)
    else:
        same, reason = [first], _reason(first, kind)
    names = ", ".join(model.model_fields) or "none"
    more = len(errors) - len(same)
    hint = f"{kind}s: {names}" + (f" ({more} more problem{'s' if more > 1 else ''})" if more else "")
    return InvalidField(f"{field}: {reason}", hint, field=field)
