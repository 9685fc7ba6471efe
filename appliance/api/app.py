"""The Starlette application factory: routes, Negotiate authentication and JSON errors, wired once."""

from __future__ import annotations

import logging

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Mount, Route

from appliance.api import v1
from appliance.api.auth import NegotiateMiddleware
from appliance.api.edge import HANDLERS, BodyLimit, Hsts
from appliance.api.negotiate import Acceptor
from appliance.api.state import ApiState, Browser, MonitorStats, database
from appliance.config import Config
from appliance.kerberos.realm import Realm
from appliance.tls import HSTS
from appliance.web.access import PREFIX
from appliance.web.app import create_web_app

log = logging.getLogger(__name__)


def _to_ui(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/", status_code=303)


def create_app(
    cfg: Config,
    *,
    acceptor: Acceptor | None = None,
    engine: Engine | None = None,
    browser: Browser | None = None,
    monitor: MonitorStats | None = None,
) -> Starlette:
    """The API for `cfg`: tickets checked against the realm's HTTP keytab, state in cfg's database.

    The database must already be at the newest schema (`drover serve` upgrades it first). `browser` is
    the host browser of this process, woken when a host is removed so it drops the session at once.
    """
    if acceptor is None:
        realm = Realm.from_config(cfg)
        acceptor = Acceptor(realm.files.http_keytab, realm.http_principal)
    db, lifespan = database(cfg, engine)

    api_state = ApiState(cfg=cfg, engine=db, browser=browser, monitor=monitor)
    web = create_web_app(api_state, acceptor)
    app = Starlette(
        routes=[*v1.routes, Mount(PREFIX, app=web), Route("/", _to_ui)],
        # Outermost first: the size of a body is refused before a ticket is even looked at.
        middleware=[
            Middleware(Hsts, value=HSTS),
            Middleware(BodyLimit, limit=cfg.api.max_body_bytes, streamed=v1.STREAMED),
            # The web UI signs its users in itself (a session cookie) and checks them in its own middleware.
            Middleware(NegotiateMiddleware, acceptor=acceptor, public=[*v1.PUBLIC, "/"], own_auth=(PREFIX,)),
        ],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    app.state.drover = api_state
    app.state.acceptor = acceptor  # the console WebSocket checks its upgrade request's Negotiate header itself
    log.debug("API app built for %s (service %s)", cfg.api_url, acceptor.principal)
    return app
