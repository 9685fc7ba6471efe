"""The password fallback: the realm checks the password, drover never stores or logs it.

A TGT is acquired for the user with the password (in memory, no ccache written), then used to get a
service ticket for the appliance's own HTTP principal, which the same acceptor as every Negotiate request
must accept. The last step matters: a TGT alone could come from a spoofed KDC; a service ticket our
keytab decrypts could not.
"""

from __future__ import annotations

import logging

import gssapi
import gssapi.raw
from gssapi.raw.misc import GSSError

from appliance.api.negotiate import Acceptor, encode
from appliance.errors import AuthError

log = logging.getLogger(__name__)

MAX_FIELD = 256
REFUSED = "sign-in failed: unknown user or wrong password"


def _principal(user: str, realm: str) -> str:
    return user if "@" in user else f"{user}@{realm}"


def password_principal(acceptor: Acceptor, user: str, password: str) -> str:
    """The principal the realm vouches for with this password, or AuthError (the same words whatever failed)."""
    user = user.strip()
    if not user or not password or len(user) > MAX_FIELD or len(password) > MAX_FIELD or "/" in user:
        raise AuthError(REFUSED, "enter your Kerberos user name and password")
    realm = acceptor.principal.rpartition("@")[2]
    try:
        name = gssapi.Name(_principal(user, realm), gssapi.NameType.kerberos_principal)
        raw = gssapi.raw.acquire_cred_with_password(name, password.encode(), usage="initiate").creds
        creds = gssapi.Credentials(base=raw)
        service = gssapi.Name(acceptor.principal, gssapi.NameType.kerberos_principal)
        ctx = gssapi.SecurityContext(name=service, creds=creds, usage="initiate")
        token = ctx.step()
    except GSSError as exc:
        log.info("password sign-in refused for %s: %s", user[:64], " ".join(str(exc.gen_message()).split()))
        raise AuthError(REFUSED, "enter your Kerberos user name and password") from None
    if token is None:
        raise AuthError(REFUSED, "enter your Kerberos user name and password")
    return acceptor.accept(encode(token)).principal
