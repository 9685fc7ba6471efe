"""SPNEGO acceptor for HTTP Negotiate (RFC 4559): one round against the appliance's HTTP keytab."""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from pathlib import Path

import gssapi
from gssapi.raw.misc import GSSError

from appliance.errors import AuthError, KerberosError

log = logging.getLogger(__name__)

SCHEME = "Negotiate"

# What a caller without a usable ticket should do; the same words go into every 401.
HINT = "get a ticket with kinit, then use drover or another Negotiate client (curl --negotiate -u :)"

# An Authorization header is a few KB even with a PAC-laden FreeIPA ticket; anything far larger is
# not a ticket and is refused before it reaches the GSS library.
MAX_TOKEN_BYTES = 64 * 1024


@dataclass(frozen=True)
class Accepted:
    """Who the ticket says the caller is, and the token that proves our identity back (mutual auth)."""

    principal: str
    token: bytes | None


def header_token(value: str) -> bytes:
    """The binary token of an `Authorization: Negotiate <base64>` header, or AuthError."""
    scheme, _, data = value.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        raise AuthError(f"unsupported authorization scheme {scheme[:32]!r}; this API speaks Negotiate", HINT)
    data = data.strip()
    if not data or len(data) > MAX_TOKEN_BYTES:
        raise AuthError("empty or oversized Negotiate token", HINT)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise AuthError("Negotiate token is not valid base64", HINT) from None


def encode(token: bytes) -> str:
    return f"{SCHEME} {base64.b64encode(token).decode('ascii')}"


class Acceptor:
    """Accepts SPNEGO (or raw krb5) tokens for one service principal, keys read straight from a keytab.

    No kinit and no ccache: acceptor credentials come from the keytab through the credential store
    extension, so the server never holds a TGT and a rotated keytab is picked up on the next request.
    """

    def __init__(self, keytab: Path, principal: str) -> None:
        self.keytab = keytab
        self.principal = principal
        if not keytab.is_file():
            raise KerberosError(
                f"HTTP keytab {keytab} does not exist",
                f"run `drover realm init`, or export {principal} into that file for an existing realm",
            )
        try:
            name = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
            self._creds = gssapi.Credentials(usage="accept", name=name, store={"keytab": str(keytab)})
        except GSSError as exc:
            raise KerberosError(
                f"cannot accept tickets for {principal} with {keytab}: {_reason(exc)}",
                f"the keytab must hold {principal}; check `klist -k {keytab}`",
            ) from None

    def accept(self, header: str) -> Accepted:
        """Complete one Negotiate round for an Authorization header value; AuthError if it fails."""
        token = header_token(header)
        ctx = gssapi.SecurityContext(creds=self._creds, usage="accept")
        try:
            out = ctx.step(token)
            # python-gssapi keeps an acceptor's failure (with SPNEGO's reject token) and raises it on
            # the next attribute read, so `complete` and the name must be read inside this try.
            complete = ctx.complete
            principal = str(ctx.initiator_name) if complete else ""
        except GSSError as exc:
            # The reason (wrong realm, stale key, replay, garbage) is for the operator's log; the
            # caller gets the same answer whatever it was, so probing tells them nothing.
            log.info("Negotiate refused: %s", _reason(exc))
            raise AuthError("Kerberos authentication failed", HINT) from None
        if not complete:
            # krb5 under SPNEGO always finishes in one round when the client sends its optimistic
            # token; a mechanism needing more rounds would need per-connection state we do not keep.
            log.info("Negotiate refused: the mechanism wanted another round")
            raise AuthError("Negotiate needs more than one round; use a Kerberos (krb5) ticket", HINT)
        log.debug("Negotiate accepted %s", principal)
        return Accepted(principal, out or None)


def _reason(exc: GSSError) -> str:
    """The GSS error's own words on one line (the minor status is the useful krb5 part)."""
    return " ".join(str(exc.gen_message()).split())
