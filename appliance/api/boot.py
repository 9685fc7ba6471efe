"""The boot service (plain HTTP, [nodes] boot_port): the CA, the image's artifacts and per-MAC iPXE scripts.

- GET /boot/ca.pem                 the appliance's CA (the node pins it against drover.ca=sha256:...)
- GET /boot/boot.ipxe              a static chain script: asks for /boot/ipxe?mac=<the booting NIC's MAC>
- GET /boot/ipxe?mac=MAC           the node's script: kernel line with drover.appliance, drover.ca,
                                   drover.libvirt_allow, BOOTIF and, for an enrolled host's reboot or a
                                   MAC inside an enrolment window, a one-time token (appliance.admission)
- GET|HEAD /boot/images/NAME       an artifact listed in the served image's manifest.json (Range works)

Plain HTTP because iPXE cannot pin our CA; the token it carries is bound to the MAC and single use.
Script requests are rate-limited per source address ([boot] scripts_per_minute). Errors are text (iPXE
and curl show them as they are); a refused request writes nothing to the DB and echoes no input back.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from appliance import admission, bootimage
from appliance.api.nodes import ca_route
from appliance.api.state import database
from appliance.config import Config
from appliance.credentials import LIBVIRT_ALLOWED_USERS
from appliance.db.engine import session_scope
from appliance.db.models import Event
from appliance.errors import DroverError, UsageError
from appliance.pki import Pki
from appliance.ratelimit import RateLimit
from appliance.text import shown
from image.bootfiles import check_args, ipxe_script
from nodeagent import wire

log = logging.getLogger(__name__)

IMAGES = "/boot/images"
SCRIPT = "/boot/ipxe"
# A host name or IPv4 address with an optional port: what a kernel argument can carry as it is.
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?")


class BootService:
    def __init__(self, cfg: Config, pki: Pki, engine: Engine) -> None:
        self.cfg = cfg
        self.engine = engine
        self.fingerprint = pki.fingerprint()
        self.limit = RateLimit(cfg.boot.scripts_per_minute, "boot scripts")

    def origin(self, request: Request) -> str:
        """http://<the name and port the node used to reach us>: what its later requests should use too."""
        host = request.headers.get("host") or f"{self.cfg.hostname}:{self.cfg.nodes.boot_port}"
        if not _HOST.fullmatch(host):
            raise UsageError(
                f"Host header {shown(host, 40)}: not a host name or IPv4 address a kernel command line can carry"
            )
        return f"http://{host}"

    def chain(self, request: Request) -> Response:
        origin = self.origin(request)
        text = (
            "#!ipxe\n"
            "# drover: fetch this machine's boot script (its kernel line carries its enrolment token)\n"
            ":retry\n"
            f"chain --autofree {origin}{SCRIPT}?mac=${{netX/mac:hexhyp}} || goto failed\n"
            ":failed\n"
            f"echo drover: no boot script from {origin}{SCRIPT}, trying again in 10 s\n"
            "sleep 10\n"
            "goto retry\n"
        )
        return PlainTextResponse(text, headers={"Cache-Control": "no-store"})

    async def script(self, request: Request) -> Response:
        given = request.query_params.get("mac", "")
        try:
            mac = wire.normalize_mac(given)
        except wire.WireError:
            raise UsageError(
                f"mac: not a MAC address ({len(given)} characters)", f"ask for {SCRIPT}?mac=${{netX/mac}}"
            ) from None
        origin = self.origin(request)
        bootimage.current(self.cfg)  # 503 before anything is written
        client = request.client.host if request.client else "?"
        self.limit.check(client)
        text = await run_in_threadpool(self._script, mac, origin, client)
        return PlainTextResponse(text, headers={"Cache-Control": "no-store"})

    def _script(self, mac: str, origin: str, client: str) -> str:
        args = [
            f"drover.appliance={origin}",
            f"drover.ca={self.fingerprint}",
            f"drover.libvirt_allow={','.join(LIBVIRT_ALLOWED_USERS)}",
            f"BOOTIF=01-{mac.replace(':', '-')}",
        ]
        ttl = timedelta(seconds=self.cfg.boot.token_ttl_seconds)
        with session_scope(self.engine) as s:
            decided = admission.boot_token(s, mac, ttl, client)
            if decided.token is not None:
                args.append(f"drover.token={decided.token}")
            # Rendered inside the transaction: an argument it refuses rolls the token back.
            text = ipxe_script(f"{origin}{IMAGES}", check_args(args))
            if decided.token is not None:
                # Events only for tokens handed out: a stream of unknown MACs must not become a stream of rows.
                s.add(
                    Event(
                        kind="boot.script",
                        subject=mac,
                        message=f"iPXE script for {mac} to {client} via {origin}; {decided.detail}",
                        host_id=decided.host_id,
                    )
                )
        log.info("boot script for %s (%s): %s", mac, client, decided.detail)
        return text

    def artifact(self, request: Request) -> Response:
        image = bootimage.current(self.cfg)
        path, st = image.artifact(request.path_params["name"])
        return FileResponse(path, stat_result=st, media_type="application/octet-stream")


def _error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, DroverError):
        level = logging.ERROR if exc.http_status >= 500 else logging.WARNING
        log.log(level, "%s %s refused (%s): %s", request.method, request.url.path, exc.http_status, exc)
        body = exc.message + (f"\nhint: {exc.hint}" if exc.hint else "") + "\n"
        return PlainTextResponse(body, status_code=exc.http_status)
    if isinstance(exc, HTTPException):
        return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code)
    log.exception("%s %s failed", request.method, request.url.path)
    return PlainTextResponse("internal server error: the appliance log has the details\n", status_code=500)


_HANDLERS: dict[Any, Any] = {DroverError: _error, HTTPException: _error, Exception: _error}


def create_boot_app(cfg: Config, pki: Pki, node_port: int = 0, *, engine: Engine | None = None) -> Starlette:
    db, lifespan = database(cfg, engine)
    service = BootService(cfg, pki, db)

    routes = [
        ca_route(pki, node_port),
        Route("/boot/boot.ipxe", service.chain, methods=["GET"]),
        Route(SCRIPT, service.script, methods=["GET"]),
        Route(IMAGES + "/{name:path}", service.artifact, methods=["GET", "HEAD"]),
    ]
    return Starlette(routes=routes, exception_handlers=_HANDLERS, lifespan=lifespan)
