"""Errors at the API's edge: every failure becomes a JSON `{"error", "hint"}` body with a fitting status."""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from appliance.api.negotiate import SCHEME
from appliance.errors import AuthError, DroverError, PayloadTooLarge, UsageError
from nodeagent import wire

log = logging.getLogger(__name__)


def error_response(exc: DroverError) -> JSONResponse:
    """The one shape of every error the API returns; a 401 always carries the Negotiate challenge."""
    headers = {"WWW-Authenticate": SCHEME} if isinstance(exc, AuthError) else None
    body = {"error": exc.message, "hint": exc.hint}
    field = getattr(exc, "field", "")
    if field:
        body["field"] = field  # a request that did not fit its declared type (appliance.api.schema)
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or UsageError (400) before any handler changes anything."""
    raw = await request.body()
    try:
        body = wire.loads(raw)  # depth-bounded: a deeply nested body is a 400, not a RecursionError
    except wire.WireError as exc:
        raise UsageError(f"request body is not valid JSON: {exc}", "send a JSON object") from None
    if not isinstance(body, dict):
        raise UsageError(f"request body must be a JSON object, not {type(body).__name__}", "send a JSON object")
    return body


class BodyLimit:
    """Refuse request bodies over `limit` bytes before anything else reads them (authentication and role
    checks included): a declared Content-Length at once, a chunked body as soon as it passes the limit.

    `streamed` paths are let through: their handlers write the body to a file as it comes (a disk image for a
    template), never hold it in memory, and check the caller's rights before reading a byte of it."""

    def __init__(self, app: ASGIApp, limit: int, streamed: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.limit = limit
        self.streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"] in self.streamed):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await error_response(self._refusal())(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._refusal()
            return message

        await self.app(scope, limited, send)

    def _refusal(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body larger than {self.limit} bytes", "send less")


class Hsts:
    """Strict-Transport-Security on every answer given over HTTPS: a browser that once reached the appliance
    securely never falls back to plain HTTP for it (and never lets a user click through a bad certificate)."""

    def __init__(self, app: ASGIApp, value: str) -> None:
        self.app = app
        self.value = value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("Strict-Transport-Security", self.value)
            await send(message)

        await self.app(scope, receive, with_hsts)


def _drover_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, DroverError):
        return _unexpected(request, exc)
    if exc.http_status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return error_response(exc)


def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        return _unexpected(request, exc)
    hints = {404: "see GET /api/v1/health and the API reference for valid paths", 405: "check the method"}
    return JSONResponse(
        {"error": exc.detail, "hint": hints.get(exc.status_code, "")},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware calls this and then re-raises, so the traceback still reaches
    # the server log; the client only learns that it was not its fault.
    return JSONResponse(
        {"error": "internal server error", "hint": "the appliance log has the details"}, status_code=500
    )


HANDLERS: dict[Any, ExceptionHandler] = {
    DroverError: _drover_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
