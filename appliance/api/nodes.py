"""The node-facing service: POST /node/v1/identify and /node/v1/heartbeat (HTTPS), GET /boot/ca.pem (HTTP).

No Kerberos here: a node has no identity until identify gives it one. Every body is size-limited and
decoded with nodeagent.wire before anything touches the database, so a bad request is a 400 naming
the field and changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance import credentials, enrolment, monitoring
from appliance.api.state import Browser, database
from appliance.config import Config
from appliance.db.engine import session_scope
from appliance.errors import DroverError, IdentityConflict, UsageError
from appliance.kerberos.realm import Realm
from appliance.pki import Pki
from appliance.ratelimit import RateLimit
from nodeagent import wire

log = logging.getLogger(__name__)

PREFIX = "/node/v1"


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` bytes (a lying or absent Content-Length included)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UsageError(f"request body: larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise UsageError(f"request body: larger than {limit} bytes")
    return bytes(body)


def _decode(cls: type[Any], body: bytes) -> Any:
    try:
        return wire.decode(cls, body)
    except wire.WireError as exc:
        raise UsageError(f"invalid {cls.__name__}: {exc}", "see nodeagent/wire.py for the format") from None


class NodeService:
    """State shared by the node handlers: config, realm (kadmin), database, the host browser if it runs here."""

    def __init__(self, cfg: Config, realm: Realm, engine: Engine, browser: Browser | None = None) -> None:
        self.cfg = cfg
        self.realm = realm
        self.engine = engine
        self.browser = browser
        self.limit = RateLimit(cfg.nodes.identify_per_minute, "identify requests")

    def issuer(self, reached_as: str) -> enrolment.Issuer:
        return lambda fqdn: credentials.issue(self.cfg, self.realm, fqdn, reached_as)

    async def identify(self, request: Request) -> Response:
        source = request.client.host if request.client else ""
        self.limit.check(source or "?")
        message = _decode(wire.IdentifyRequest, await read_limited(request, self.cfg.nodes.max_body_bytes))
        result = await run_in_threadpool(self._identify, message, request.url.hostname or "", source)
        status = 200 if result.response.status is wire.IdentifyStatus.ACCEPTED else 202
        return Response(wire.encode(result.response), status_code=status, media_type="application/json")

    def _identify(self, message: wire.IdentifyRequest, reached_as: str, source: str) -> enrolment.Identified:
        beat = self.cfg.nodes.heartbeat_seconds
        try:
            with session_scope(self.engine) as s:
                return enrolment.identify(
                    s,
                    message,
                    self.issuer(reached_as),
                    beat,
                    source,
                    monitoring.target(self.cfg, reached_as),
                    self.cfg.nodes.network_rollback_seconds,
                )
        except IdentityConflict as exc:
            # The refusal rolled everything back; the warning for the admin is committed on its own.
            with session_scope(self.engine) as s:
                enrolment.record_conflict(s, exc, source)
            raise

    async def heartbeat(self, request: Request) -> Response:
        message = _decode(wire.Heartbeat, await read_limited(request, self.cfg.nodes.max_body_bytes))
        response = await run_in_threadpool(self._heartbeat, message, request.url.hostname or "")
        return Response(wire.encode(response), media_type="application/json")

    def _heartbeat(self, message: wire.Heartbeat, reached_as: str) -> wire.HeartbeatResponse:
        with session_scope(self.engine) as s:
            answer, host = enrolment.heartbeat(
                s,
                message,
                self.issuer(reached_as),
                self.cfg.nodes.heartbeat_seconds,
                monitoring.target(self.cfg, reached_as),
                self.cfg.nodes.network_rollback_seconds,
            )
            host_id = host.id if host is not None else None
            moved = host is not None and enrolment.record_libvirt_port(
                s, host, message.libvirt_port, self.cfg.nodes.libvirt_port
            )
        # Committed (credentials handed out are in the row): a node that beats is up, so if the browser lost
        # its libvirtd it reconnects now, not reconnect_seconds later; a just-approved one is connected now.
        if host_id is not None and self.browser is not None:
            if moved:
                self.browser.wake()  # a new URI: its next scan starts the host's session over on it
            self.browser.nudge(host_id)
        return answer


def _error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, DroverError):
        if exc.http_status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        else:
            log.warning("%s %s refused (%s): %s", request.method, request.url.path, exc.http_status, exc)
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=exc.http_status)
    if isinstance(exc, HTTPException):
        return JSONResponse({"error": exc.detail, "hint": ""}, status_code=exc.status_code)
    return JSONResponse({"error": "internal server error", "hint": "the appliance log has the details"}, 500)


_HANDLERS: dict[Any, Any] = {DroverError: _error, HTTPException: _error, Exception: _error}


def create_node_app(
    cfg: Config, *, realm: Realm | None = None, engine: Engine | None = None, browser: Browser | None = None
) -> Starlette:
    """`browser`: the host browser of this process, nudged by every heartbeat of an approved host."""
    db, lifespan = database(cfg, engine)
    service = NodeService(cfg, realm or Realm.from_config(cfg), db, browser)

    routes = [
        Route(f"{PREFIX}/identify", service.identify, methods=["POST"]),
        Route(f"{PREFIX}/heartbeat", service.heartbeat, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers=_HANDLERS, lifespan=lifespan)


NODE_API_HEADER = "X-Drover-Node-Api"  # nodeagent.tls.API_HEADER: where the HTTPS node API is


def ca_route(pki: Pki, node_port: int = 0) -> Route:
    """GET /boot/ca.pem (plain HTTP): what a node fetches before it can trust anything.

    With `node_port`, the answer also says where the HTTPS node API is (the name the node used to
    reach us, that port): without it the agent guesses the default 8443, wrong on any other port.
    The boot service (appliance.api.boot) serves it beside the artifacts and iPXE scripts.
    """
    pem = pki.ca_pem()
    fingerprint = pki.fingerprint()

    def ca(request: Request) -> Response:
        headers = {"X-Drover-CA": fingerprint}
        host = request.url.hostname
        if node_port and host:
            host = f"[{host}]" if ":" in host else host
            headers[NODE_API_HEADER] = f"https://{host}:{node_port}"
        return Response(pem, media_type="application/x-pem-file", headers=headers)

    return Route("/boot/ca.pem", ca, methods=["GET"])


def create_boot_app(pki: Pki, node_port: int = 0) -> Starlette:
    """/boot/ca.pem alone; `drover serve` runs the whole boot service, appliance.api.boot.create_boot_app."""
    return Starlette(routes=[ca_route(pki, node_port)], exception_handlers=_HANDLERS)
