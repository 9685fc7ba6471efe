"""The CLI's client for the appliance's REST API: httpx with Kerberos Negotiate under the caller's own ticket."""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
from collections.abc import Generator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import gssapi
import httpx
from gssapi.raw.exceptions import ExpiredCredentialsError, MissingCredentialsError
from gssapi.raw.misc import GSSError

from appliance.config import Config
from appliance.errors import (
    AuthError,
    Conflict,
    DroverError,
    Forbidden,
    KerberosError,
    NotFound,
    UpstreamError,
    UsageError,
)

log = logging.getLogger(__name__)

SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
_FLAGS = gssapi.RequirementFlag.mutual_authentication | gssapi.RequirementFlag.out_of_sequence_detection


class ApiUnreachable(DroverError):
    """Nothing answered at the API's URL (not running, wrong URL, name does not resolve)."""


class ApiUntrusted(DroverError):
    """The API's TLS certificate is not vouched for by the CA this client trusts (or names another host)."""

    exit_code = 8


class ApiError(DroverError):
    """The API answered with an error status this client has no more specific class for."""

    def __init__(self, message: str, hint: str = "", status: int = 500) -> None:
        super().__init__(message, hint)
        self.status = status


# Statuses that map onto drover's own error classes, so the CLI exits with the same codes either way.
_BY_STATUS: dict[int, type[DroverError]] = {
    400: UsageError,
    401: AuthError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    502: UpstreamError,
}


def _ccache_name() -> str:
    return os.environ.get("KRB5CCNAME", "the default credential cache")


def _gss_failure(exc: GSSError, service: str) -> DroverError:
    """Turn an initiator-side GSS failure into an error that says what to do."""
    reason = " ".join(str(exc.gen_message()).split())
    lowered = reason.lower()
    if isinstance(exc, ExpiredCredentialsError) or "expired" in lowered:
        return AuthError(f"your Kerberos ticket in {_ccache_name()} has expired", "run kinit <you>@REALM again")
    if isinstance(exc, MissingCredentialsError) or "no kerberos credentials" in lowered:
        return AuthError(
            f"no Kerberos ticket in {_ccache_name()}; the drover API needs one", "run kinit <you>@REALM, then try again"
        )
    if "server not found" in lowered:
        return KerberosError(
            f"the realm has no service principal {service.replace('@', '/', 1)}: {reason}",
            "the API URL's host must be the appliance's [kerberos] hostname (set DROVER_API_URL to match)",
        )
    if "cannot contact any kdc" in lowered or "cannot find kdc" in lowered:
        return KerberosError(f"cannot get a service ticket: {reason}", "check KRB5_CONFIG and that the KDC is up")
    return KerberosError(f"Kerberos failed for {service}: {reason}", "check your ticket with klist")


class NegotiateAuth(httpx.Auth):
    """HTTP Negotiate with the caller's ticket: one SPNEGO token per request, server identity verified."""

    def __init__(self, service_host: str, ccache: str | None = None) -> None:
        self.service = f"HTTP@{service_host}"
        self.ccache = ccache

    def _context(self) -> gssapi.SecurityContext:
        name = gssapi.Name(self.service, gssapi.NameType.hostbased_service)
        # Acquired here rather than left to SPNEGO, whose "cannot find mechanisms to negotiate" hides
        # the plain krb5 reason (no ticket, expired ticket) the caller needs to hear.
        store: dict[bytes | str, bytes | str] | None = {"ccache": self.ccache} if self.ccache else None
        creds = gssapi.Credentials(usage="initiate", store=store)
        return gssapi.SecurityContext(name=name, creds=creds, usage="initiate", mech=SPNEGO, flags=_FLAGS)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        try:
            ctx = self._context()
            token = ctx.step()
        except GSSError as exc:
            raise _gss_failure(exc, self.service) from None
        request.headers["Authorization"] = "Negotiate " + base64.b64encode(token or b"").decode("ascii")
        response = yield request
        if response.status_code != 401:
            self._verify(ctx, response)

    def header(self) -> str:
        """An Authorization header value for a request httpx does not send (a WebSocket upgrade)."""
        try:
            token = self._context().step()
        except GSSError as exc:
            raise _gss_failure(exc, self.service) from None
        return "Negotiate " + base64.b64encode(token or b"").decode("ascii")

    def _verify(self, ctx: gssapi.SecurityContext, response: httpx.Response) -> None:
        """Mutual authentication: only the holder of the HTTP/ key can produce this token."""
        server_token = _server_token(response)
        if server_token is None:
            if response.is_error:
                return  # an error from outside the auth layer (a crash): let the caller report it
            raise AuthError(
                f"{response.url} answered without proving its identity (no mutual-auth token)",
                "the URL may not point at a drover appliance",
            )
        try:
            ctx.step(server_token)
            complete = ctx.complete  # python-gssapi may raise a stored step failure here
        except GSSError as exc:
            reason = " ".join(str(exc.gen_message()).split())
            raise AuthError(f"{response.url} failed mutual authentication: {reason}") from None
        if not complete:
            raise AuthError(f"{response.url} did not complete mutual authentication")


def _server_token(response: httpx.Response) -> bytes | None:
    for value in response.headers.get_list("www-authenticate"):
        scheme, _, data = value.strip().partition(" ")
        if scheme.lower() == "negotiate" and data.strip():
            try:
                return base64.b64decode(data.strip(), validate=True)
            except ValueError:
                return None
    return None


class Client:
    """The appliance API as Python calls: get()/post() return parsed JSON or raise a DroverError."""

    def __init__(
        self,
        base_url: str,
        *,
        service_host: str | None = None,
        ccache: str | None = None,
        timeout: float = 30.0,
        ca_file: str | Path | None = None,
    ) -> None:
        """`service_host` names HTTP/<host> when the URL's host differs (an IP, a load balancer); `ca_file`
        is the CA an https:// API's certificate must chain to (None: the system's trusted CAs)."""
        self.base_url = base_url.rstrip("/")
        host = service_host or urlsplit(self.base_url).hostname
        if not host:
            raise UsageError(f"API URL {base_url!r} has no host name", "set [api] url, e.g. http://appliance:8080")
        self.auth = NegotiateAuth(host, ccache)
        self.ca_file = str(ca_file) if ca_file else ""
        self._http = httpx.Client(
            base_url=self.base_url, auth=self.auth, timeout=timeout, trust_env=False, verify=trust(ca_file)
        )

    @classmethod
    def from_config(cls, cfg: Config) -> Client:
        return cls(cfg.api_url, ca_file=api_ca_file(cfg))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def pages(self, path: str, key: str, page_size: int = 500, limit: int | None = None, offset: int = 0) -> list[Any]:
        """Every row of a paged list (`GET path?limit=&offset=` answering {key, total}), page after page; with
        `limit`, at most that many from `offset`."""
        rows: list[Any] = []
        while limit is None or len(rows) < limit:
            want = page_size if limit is None else min(page_size, limit - len(rows))
            answer = self.get(path, {"limit": str(want), "offset": str(offset + len(rows))})
            got = answer[key]
            rows += got
            if not got or offset + len(rows) >= int(answer["total"]):
                break
        return rows

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body)

    def upload(self, path: str, source: Path, params: dict[str, str] | None = None) -> Any:
        """POST a file's bytes as the body (application/octet-stream), streamed from disk."""

        def chunks() -> Iterator[bytes]:
            with source.open("rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(source.stat().st_size)}
        return self.request("POST", path, params=params, content=chunks(), headers=headers)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content: Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        url = f"{self.base_url}{path}"
        try:
            if content is not None:
                response = self._http.request(method, path, content=content, params=params, headers=headers)
            else:
                response = self._http.request(method, path, json=body, params=params)
        except httpx.TransportError as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            if "CERTIFICATE_VERIFY_FAILED" in reason or isinstance(exc.__context__, ssl.SSLCertVerificationError):
                where = f"the CA in {self.ca_file}" if self.ca_file else "the system's trusted CAs"
                raise ApiUntrusted(
                    f"the drover API at {url} has a TLS certificate {where} does not vouch for: {reason}",
                    "get the appliance's CA with `drover ca export` there, then pass --ca FILE or set [api] ca_file",
                ) from None
            raise ApiUnreachable(
                f"cannot reach the drover API at {url}: {reason}",
                "is `drover serve` running there? set [api] url (DROVER_API_URL) if it lives elsewhere",
            ) from None
        log.debug("%s %s -> %s", method, url, response.status_code)
        if response.is_error:
            raise _error(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{url} answered with something that is not JSON", status=response.status_code) from None


def trust(ca_file: str | Path | None) -> ssl.SSLContext:
    """What an https:// API must present: a certificate chaining to `ca_file`, else to the system's CAs."""
    if not ca_file:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"CA file {ca_file}: cannot use it: {reason}", "give the PEM of `drover ca export`") from None


def api_ca_file(cfg: Config) -> str:
    """[api] ca_file, else the appliance's own CA when this machine has it (the CLI on the appliance)."""
    if cfg.api.ca_file:
        return str(Path(cfg.api.ca_file).expanduser())
    own = cfg.pki_dir / "ca.pem"
    # A certificate the admin provided comes from their own (system-trusted) CA, not ours.
    return str(own) if not cfg.api.cert_file and os.access(own, os.R_OK) else ""


def _error(response: httpx.Response) -> DroverError:
    """The server's own error and hint, as the DroverError class that matches its status."""
    message, hint = f"HTTP {response.status_code} from {response.url}", ""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
        hint = str(body.get("hint") or "")
    cls = _BY_STATUS.get(response.status_code)
    if cls is not None:
        return cls(message, hint)
    return ApiError(message, hint, status=response.status_code)
