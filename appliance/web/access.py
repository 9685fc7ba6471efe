"""Who is calling a /ui page: the session cookie (naming a session row in the database), and the CSRF token
every state-changing request carries.

Pure ASGI middleware in front of the UI routes (the API's Negotiate middleware lets /ui through): a valid
cookie puts the same `Caller` the API uses into the scope, so the UI's handlers call the same domain
functions and the same permission check (appliance.permissions) as the API's. Without a cookie a page
request is sent to the sign-in URL and a fragment or event stream gets a bare 401.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import quote

from anyio import to_thread
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.api.auth import Caller
from appliance.api.negotiate import Acceptor
from appliance.ratelimit import RateLimit
from appliance.web.session import COOKIE, Sessions, UiSession, csrf_ok

PREFIX = "/ui"
# Reachable without a session: the sign-in pages themselves and the static files.
OPEN = (f"{PREFIX}/login", f"{PREFIX}/static/")
CSRF_HEADER = "x-csrf-token"
# On every UI answer: no framing by other sites (clickjacking an admin's clicks), no MIME sniffing, no
# URLs with object ids leaking to other sites in Referer.
HARDENING = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'; form-action 'self'; base-uri 'self'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# Password guesses through the sign-in form, per client address: the KDC would take them all.
PASSWORD_TRIES_PER_MINUTE = 20


@dataclass(frozen=True)
class WebState:
    acceptor: Acceptor
    sessions: Sessions
    secure_cookie: bool  # False only when the appliance listens on loopback (tests, the demo)
    password_tries: RateLimit = field(default_factory=lambda: RateLimit(PASSWORD_TRIES_PER_MINUTE, "sign-ins"))


def web_state(conn: HTTPConnection) -> WebState:
    value = conn.app.state.web
    if not isinstance(value, WebState):
        raise TypeError("the app was not built with the web UI")
    return value


def is_loopback(listen: str) -> bool:
    try:
        return ipaddress.ip_address(listen).is_loopback
    except ValueError:
        return listen == "localhost"


def ui_session(conn: HTTPConnection) -> UiSession:
    value = conn.scope.get("ui_session")
    if not isinstance(value, UiSession):
        raise TypeError("no UI session: the route is not behind SessionMiddleware")
    return value


def safe_next(value: str | None) -> str:
    """Where to go after signing in: only a path inside the UI (no other site, no //host)."""
    if value and value.startswith(f"{PREFIX}/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/"


class SessionMiddleware:
    def __init__(self, app: ASGIApp, sessions: Sessions) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return

        async def hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HARDENING.items():
                    headers.setdefault(name, value)
            await send(message)

        if path.startswith(OPEN):
            await self.app(scope, receive, hardened)
            return
        await self._checked(scope, receive, hardened)

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        conn = HTTPConnection(scope)
        # A database read per request (a thread: the event loop never waits on it): revocation is immediate.
        session = await to_thread.run_sync(self.sessions.read, conn.cookies.get(COOKIE))
        headers = Headers(scope=scope)
        if session is None:
            response: Response
            if scope["method"] == "GET" and "hx-request" not in headers and path != f"{PREFIX}/stream":
                target = path + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
                response = RedirectResponse(f"{PREFIX}/login/negotiate?next={quote(target)}", status_code=303)
            else:
                response = PlainTextResponse("sign in first", status_code=401)
            await response(scope, receive, send)
            return
        if scope["method"] not in SAFE_METHODS and not csrf_ok(session, headers.get(CSRF_HEADER)):
            # Every UI form posts through htmx, which sends the session's token as a header; a cross-site
            # form cannot set a header, and SameSite=Strict keeps the cookie off it anyway.
            await PlainTextResponse("missing or wrong CSRF token", status_code=403)(scope, receive, send)
            return
        scope["user"] = Caller(session.principal)
        scope["auth"] = AuthCredentials(["authenticated"])
        scope["ui_session"] = session
        await self.app(scope, receive, send)
