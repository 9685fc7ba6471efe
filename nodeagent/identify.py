"""The node API client: `POST /node/v1/identify` and `/node/v1/heartbeat` over HTTPS with the pinned CA."""

from __future__ import annotations

import http.client
import logging
import ssl
import urllib.parse
from typing import Any, TypeVar

from nodeagent import wire

log = logging.getLogger(__name__)

IDENTIFY_PATH = "/node/v1/identify"
HEARTBEAT_PATH = "/node/v1/heartbeat"

R = TypeVar("R")
# The appliance answers identify with 200 (accepted) or 202 (recorded, pending approval); both carry a body.
OK_STATUSES = (200, 202)


class ApplianceError(RuntimeError):
    """The appliance could not be reached or answered with an error; `status` is 0 for network errors."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def unknown_host(self) -> bool:
        """The appliance no longer knows us or our per-boot agent token (401, as drover serve answers a
        heartbeat it cannot match; 404/410): identify again rather than heartbeat into a wall forever."""
        return self.status in (401, 404, 410)


class NodeApiClient:
    def __init__(self, api_url: str, context: ssl.SSLContext, timeout: float = 15.0) -> None:
        parts = urllib.parse.urlsplit(api_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"node API URL must be https://host[:port]: {api_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.prefix = parts.path.rstrip("/")
        self.context = context
        self.timeout = timeout

    def identify(self, request: wire.IdentifyRequest) -> wire.IdentifyResponse:
        return self._post(IDENTIFY_PATH, request, wire.IdentifyResponse)

    def heartbeat(self, beat: wire.Heartbeat) -> wire.HeartbeatResponse:
        return self._post(HEARTBEAT_PATH, beat, wire.HeartbeatResponse)

    def _post(self, path: str, message: Any, answer: type[R]) -> R:
        body = wire.encode(message)
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
        where = f"https://{self.host}:{self.port}{self.prefix}{path}"
        try:
            conn.request(
                "POST",
                self.prefix + path,
                body=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            resp = conn.getresponse()
            data = resp.read(wire.MAX_MESSAGE_BYTES + 1)
        except ssl.SSLCertVerificationError as exc:
            log.error("POST %s: the appliance's certificate does not verify against the pinned CA: %s", where, exc)
            raise ApplianceError(f"POST {where}: certificate refused: {exc.verify_message}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ApplianceError(f"POST {where}: {exc}") from None
        finally:
            conn.close()
        if resp.status not in OK_STATUSES:
            reason = data[:300].decode(errors="replace")
            raise ApplianceError(f"POST {where}: HTTP {resp.status}: {reason}", resp.status)
        try:
            return wire.decode(answer, data)
        except wire.WireError as exc:
            raise ApplianceError(f"POST {where}: bad answer: {exc}", resp.status) from None
