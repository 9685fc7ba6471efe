"""Signing in and out of the web UI.

GET /ui/login/negotiate is the SPNEGO URL: a browser with a ticket (and the appliance on its Negotiate
allow-list) answers the 401 challenge by itself and gets the session cookie; one without a ticket shows
the 401's body, which is the password form. POST /ui/login checks a password against the realm
(appliance.web.signin). POST /ui/logout ends the session (its row is deleted) and drops the cookie.
"""

from __future__ import annotations

import logging

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from appliance.api.negotiate import SCHEME, encode
from appliance.errors import AuthError, Forbidden, TooManyRequests, UsageError
from appliance.web.access import PREFIX, safe_next, web_state
from appliance.web.forms import form_fields
from appliance.web.pages import TEMPLATES
from appliance.web.session import COOKIE
from appliance.web.signin import password_principal

log = logging.getLogger(__name__)


def _form(request: Request, status: int, error: str = "", headers: dict[str, str] | None = None) -> HTMLResponse:
    html = TEMPLATES.get_template("login.html").render(
        prefix=PREFIX, next=safe_next(request.query_params.get("next")), error=error
    )
    return HTMLResponse(html, status_code=status, headers=headers)


def _source(request: Request) -> str:
    """Where a sign-in came from, for the admin listing sessions: the client's address and its user agent."""
    agent = " ".join(request.headers.get("user-agent", "").split())[:160]
    return f"{request.client.host if request.client else '?'} {agent}".strip()


async def _signed_in(
    request: Request, principal: str, target: str, method: str, token: bytes | None = None
) -> Response:
    web = web_state(request)
    # Always a new session: a cookie the browser already had (planted or not) is never taken over.
    try:
        _, cookie = await to_thread.run_sync(web.sessions.issue, principal, method, _source(request))
    except Forbidden as exc:
        log.info("web UI sign-in refused: %s", exc.message)
        return _form(request, 403, exc.message)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, cookie, max_age=web.sessions.lifetime, path=f"{PREFIX}/", httponly=True,
                        samesite="strict", secure=web.secure_cookie)  # fmt: skip
    if token is not None:
        response.headers["WWW-Authenticate"] = encode(token)
    log.info("web UI sign-in: %s", principal)
    return response


def login_page(request: Request) -> Response:
    return _form(request, 200)


async def negotiate(request: Request) -> Response:
    header = request.headers.get("authorization")
    if not header:
        # The challenge; its body is the password form, which is what a browser without a ticket shows.
        return _form(request, 401, headers={"WWW-Authenticate": SCHEME})
    try:
        accepted = await to_thread.run_sync(web_state(request).acceptor.accept, header)
    except AuthError:
        return _form(request, 401, "Kerberos sign-in failed: sign in with your password")
    target = safe_next(request.query_params.get("next"))
    return await _signed_in(request, accepted.principal, target, "kerberos", accepted.token)


async def password_login(request: Request) -> Response:
    try:
        form = await form_fields(request)
    except UsageError as exc:
        return _form(request, 400, exc.message)
    user, password = form.get("user", ""), form.get("password", "")
    target = safe_next(form.get("next"))
    web = web_state(request)
    try:
        web.password_tries.check(request.client.host if request.client else "?")
    except TooManyRequests as exc:
        return _form(request, 429, f"{exc.message}: {exc.hint}")
    try:
        principal = await to_thread.run_sync(password_principal, web.acceptor, user, password)
    except AuthError as exc:
        return _form(request, 401, exc.message)
    return await _signed_in(request, principal, target, "password")


async def logout(request: Request) -> Response:
    await to_thread.run_sync(web_state(request).sessions.end, request.cookies.get(COOKIE))
    response = Response(status_code=204, headers={"HX-Redirect": f"{PREFIX}/login"})
    response.delete_cookie(COOKIE, path=f"{PREFIX}/", httponly=True, samesite="strict",
                           secure=web_state(request).secure_cookie)  # fmt: skip
    return response
