"""The Starlette application factory: routes, Negotiate authentication and JSON errors, wired once."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware

from appliance.api import v1
from appliance.api.auth import NegotiateMiddleware
from appliance.api.edge import HANDLERS
from appliance.api.negotiate import Acceptor
from appliance.api.state import ApiState
from appliance.config import Config
from appliance.kerberos.realm import Realm

log = logging.getLogger(__name__)


def create_app(
    cfg: Config,
    *,
    acceptor: Acceptor | None = None,
    roles_of: Callable[[str], list[str]] | None = None,
) -> Starlette:
    """The API for `cfg`; the acceptor defaults to the realm's HTTP keytab, roles to the database."""
    if acceptor is None:
        realm = Realm.from_config(cfg)
        acceptor = Acceptor(realm.files.http_keytab, realm.http_principal)
    if roles_of is None:
        roles_of = _database_roles(cfg)
    app = Starlette(
        routes=v1.routes,
        middleware=[Middleware(NegotiateMiddleware, acceptor=acceptor, public=v1.PUBLIC)],
        exception_handlers=HANDLERS,
    )
    app.state.drover = ApiState(cfg=cfg, roles_of=roles_of)
    log.debug("API app built for %s (service %s)", cfg.api_url, acceptor.principal)
    return app


def _database_roles(cfg: Config) -> Callable[[str], list[str]]:
    def lookup(principal: str) -> list[str]:
        return []

    return lookup
