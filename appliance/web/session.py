"""The web UI's session cookie: a random id naming a session kept in the database (appliance.websessions).

Nothing but the id is in the cookie; who signed in, until when, and the CSRF token of the session are in the
row, so signing out, an admin's revocation or disabling the user ends it for every copy of the cookie.
"""

from __future__ import annotations

import hmac

from appliance.websessions import LIFETIME_SECONDS, Sessions, UiSession

COOKIE = "drover_session"

__all__ = ["COOKIE", "LIFETIME_SECONDS", "Sessions", "UiSession", "csrf_ok"]


def csrf_ok(session: UiSession, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(session.csrf.encode(), sent.encode())
