"""Errors at the API's edge: every failure becomes a JSON `{"error", "hint"}` body with a fitting status."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from appliance.api.negotiate import SCHEME
from appliance.errors import AuthError, DroverError, UsageError

log = logging.getLogger(__name__)


def error_response(exc: DroverError) -> JSONResponse:
    """The one shape of every error the API returns; a 401 always carries the Negotiate challenge."""
    headers = {"WWW-Authenticate": SCHEME} if isinstance(exc, AuthError) else None
    return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=exc.http_status, headers=headers)


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or UsageError (400) before any handler changes anything."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"request body is not valid JSON: {exc}", "send a JSON object") from None
    if not isinstance(body, dict):
        raise UsageError(f"request body must be a JSON object, not {type(body).__name__}", "send a JSON object")
    return body


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
