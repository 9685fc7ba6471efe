"""Negotiate authentication for every API request except a few public paths; the caller lands in request.user."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from anyio import to_thread
from starlette.authentication import AuthCredentials, BaseUser
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.api.edge import error_response
from appliance.api.negotiate import HINT, Acceptor, encode
from appliance.errors import AuthError


@dataclass(frozen=True)
class Caller(BaseUser):
    """An authenticated Kerberos principal (`name@REALM`), as the KDC vouched for it."""

    principal: str

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.principal

    @property
    def identity(self) -> str:
        return self.principal

    @property
    def realm(self) -> str:
        return self.principal.rpartition("@")[2]


def caller(conn: HTTPConnection) -> Caller:
    """The authenticated caller of a request that went through NegotiateMiddleware."""
    user = conn.scope.get("user")
    if not isinstance(user, Caller):
        # Only reachable if a public path's handler asks who is calling: a programming error that
        # must still answer 401, never leak a 500 or serve the request anonymously.
        raise AuthError("authentication required", HINT)
    return user


class NegotiateMiddleware:
    """Pure ASGI middleware: one SPNEGO round per request, the mutual-auth token added to the response.

    Public paths need no ticket, but one sent there is still checked, so a client gets the server's
    proof of identity back on every path.

    Each request carries its own ticket (no session cookie yet), which costs a few milliseconds and
    keeps the server stateless; the replay cache stops a captured header being used again.
    """

    def __init__(
        self, app: ASGIApp, acceptor: Acceptor, public: Collection[str] = (), own_auth: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.acceptor = acceptor
        self.public = frozenset(public)
        # Path prefixes whose app authenticates its callers itself (the web UI's session cookie).
        self.own_auth = own_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.own_auth):
            await self.app(scope, receive, send)
            return
        public = scope["path"] in self.public
        header = Headers(scope=scope).get("authorization")
        try:
            if not header:
                if public:
                    await self.app(scope, receive, send)
                    return
                raise AuthError("authentication required: this API accepts Kerberos (Negotiate) only", HINT)
            # GSS calls block (keytab and replay-cache files): keep them off the event loop.
            accepted = await to_thread.run_sync(self.acceptor.accept, header)
        except AuthError as exc:
            if public:
                # A public path serves anyone; a bad ticket there is no reason to fail a health check.
                await self.app(scope, receive, send)
                return
            await error_response(exc)(scope, receive, send)
            return
        scope["user"] = Caller(accepted.principal)
        scope["auth"] = AuthCredentials(["authenticated"])
        token = accepted.token
        if token is None:
            await self.app(scope, receive, send)
            return

        async def send_with_token(message: Message) -> None:
            # Every answer to an authenticated request proves the server's identity, errors included,
            # so a client can trust a 404 or 409 as much as a 200.
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("WWW-Authenticate", encode(token))
            await send(message)

        await self.app(scope, receive, send_with_token)
