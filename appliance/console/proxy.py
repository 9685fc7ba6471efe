"""The console WebSocket: a redeemed one-time ticket becomes one console session, proxied through the appliance.

VNC: the appliance sets a one-time password on the VM's VNC display through libvirt, connects to the host's
VNC port over TCP, logs in with that password (appliance.console.rfb), at once replaces it with another nobody
knows, and relays RFB between the browser's noVNC and qemu. Serial: the domain's console as a libvirt stream
over the same Kerberos connection, relayed as raw bytes (xterm.js, `drover vm console --serial`).

Refusals (no, wrong, expired, used or another user's ticket; another VM or kind) close the handshake with 403
before anything is opened on any host. An open session ends when either side closes, when its VM stops or
moves, or when its user loses the right to control the VM (re-checked every [console] check_seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from appliance.api.state import ApiState
from appliance.console import rfb
from appliance.console.hostlink import ConsoleUnavailable, HostLink, SerialStream, one_time_password
from appliance.console.tickets import Grant, parse_kind, redeem, still_open
from appliance.db.engine import session_scope
from appliance.db.models import ConsoleKind, Host, Vm
from appliance.errors import DroverError

log = logging.getLogger(__name__)

# WebSocket close codes: 1000 normal, 1008 policy (refused, right lost), 1011 the far side failed.
NORMAL, POLICY, FAILED = 1000, 1008, 1011
# How long the one-time VNC password is good for: from setting it to the proxy's own login, seconds apart.
PASSWORD_SECONDS = 30
READ_CHUNK = 64 * 1024


class _NoTickets(logging.Filter):
    """uvicorn logs each WebSocket's path with its query: the ticket's secret stays out of the log (used or not,
    it is nobody's business), its selector stays in (the console_tickets row says whose it was)."""

    _SECRET = re.compile(r"(ticket=[0-9a-f]*)(?:\.|%2[eE])[^&\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._SECRET.sub(r"\1.(hidden)", a) if isinstance(a, str) else a for a in record.args)
        return True


logging.getLogger("uvicorn.error").addFilter(_NoTickets())


@dataclass(frozen=True)
class Target:
    vm_uuid: str
    vm_name: str
    hostname: str
    libvirt_port: int | None


def _redeem(api: ApiState, ticket: str, vm_id: int, kind: ConsoleKind, caller: str | None,
            ui_session: str | None) -> tuple[Grant, Target]:  # fmt: skip
    with session_scope(api.engine) as s:
        grant = redeem(s, ticket, vm_id, kind, caller, ui_session)
        vm, host = s.get(Vm, vm_id), s.get(Host, grant.host_id)
        if vm is None or host is None:
            raise ConsoleUnavailable("the VM or its host is gone")
        return grant, Target(vm.uuid, vm.name, host.hostname, host.libvirt_port)


def _check(api: ApiState, grant: Grant) -> str | None:
    with session_scope(api.engine) as s:
        return still_open(s, grant)


async def serve(websocket: WebSocket, api: ApiState, caller: str | None, ui_session: str | None = None) -> None:
    """Handle one console WebSocket at /…/vms/{id}/console/{kind}…?ticket=… for `caller` (None: nobody known),
    from the web UI session `ui_session` (tickets.session_key(); None over the API)."""
    text_id = str(websocket.path_params.get("id", ""))
    try:
        if not text_id.isdigit():
            raise ConsoleUnavailable(f"VM {text_id!r} does not exist")
        if caller is None:
            raise DroverError("console refused: the connection carries no sign-in", "sign in, then ask for a ticket")
        kind = parse_kind(websocket.path_params.get("kind"))
        grant, target = await run_in_threadpool(
            _redeem, api, websocket.query_params.get("ticket", ""), int(text_id), kind, caller, ui_session
        )
    except DroverError as exc:
        log.info("console WebSocket for VM %s refused: %s", text_id, exc.message)
        await websocket.close(code=POLICY)  # before accept: the handshake is answered 403
        return
    link = HostLink(api.cfg, target.hostname, target.libvirt_port)
    try:
        await run_in_threadpool(link.open)
        dom = await run_in_threadpool(link.domain, target.vm_uuid)
    except DroverError as exc:
        log.warning("console of VM %s unavailable: %s", target.vm_name, exc)
        await run_in_threadpool(link.close)
        await websocket.close(code=FAILED)
        return
    log.info("%s console of VM %s opened by %s", kind, target.vm_name, grant.principal)
    await websocket.accept(subprotocol="binary" if "binary" in websocket.scope.get("subprotocols", []) else None)
    reason, code = "closed", NORMAL
    try:
        session = _vnc(websocket, api, link, dom) if kind is ConsoleKind.VNC else _serial(websocket, api, link, dom)
        reason = await _supervised(session, api, grant)
        if reason.startswith("revoked: "):
            reason, code = reason.removeprefix("revoked: "), POLICY
    except DroverError as exc:
        reason, code = exc.message, FAILED
        log.warning("console of VM %s failed: %s", target.vm_name, exc)
    finally:
        await run_in_threadpool(link.close)
        if websocket.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                # A close frame's reason holds at most 123 bytes.
                await websocket.close(code=code, reason=reason.encode()[:120].decode(errors="ignore"))
    log.info("%s console of VM %s closed (%s)", kind, target.vm_name, reason)


async def _supervised(session: Awaitable[str], api: ApiState, grant: Grant) -> str:
    """Run the relay until it ends, or until the user's right or the VM's state says it must end."""
    relay = asyncio.ensure_future(session)
    try:
        while True:
            done, _ = await asyncio.wait({relay}, timeout=max(api.cfg.console.check_seconds, 0.2))
            if done:
                return relay.result()
            why = await run_in_threadpool(_check, api, grant)
            if why is not None:
                return f"revoked: {why}"
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await relay


class WsBytes:
    """The browser's side as a byte stream: RFB messages need not line up with WebSocket messages."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.pending = b""

    async def message(self) -> bytes:
        msg = await self.websocket.receive()
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", NORMAL))
        data = msg.get("bytes")
        return data if isinstance(data, bytes) else str(msg.get("text") or "").encode()

    async def read(self, n: int) -> bytes:
        while len(self.pending) < n:
            self.pending += await asyncio.wait_for(self.message(), rfb.HANDSHAKE_SECONDS)
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    async def send(self, data: bytes) -> None:
        await self.websocket.send_bytes(data)


async def _pump(pull: Callable[[], Awaitable[bytes | None]], push: Callable[[bytes], Awaitable[None]]) -> None:
    while (data := await pull()) is not None:
        await push(data)


async def _relay(*pumps: Awaitable[None]) -> str:
    """Run both directions; the first to end (either side closed) ends the session."""
    tasks = [asyncio.ensure_future(p) for p in pumps]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            exc = task.exception()
            if isinstance(exc, WebSocketDisconnect):
                return "the client closed it"
            if isinstance(exc, DroverError):
                raise exc
            if exc is not None:  # a connection reset or a send on a socket closed meanwhile: the end, not a bug
                return f"the connection ended ({type(exc).__name__})"
        return "the console ended"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _vnc(websocket: WebSocket, api: ApiState, link: HostLink, dom: object) -> str:
    password = one_time_password()
    display = await run_in_threadpool(link.set_vnc_password, dom, password, PASSWORD_SECONDS)
    host = link.uri.split("//", 1)[1].split(":", 1)[0]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, display.port, limit=READ_CHUNK), 10)
    except (OSError, TimeoutError) as exc:
        raise ConsoleUnavailable(f"cannot reach the VNC display at {host}:{display.port}: {exc}") from None
    try:
        # The buffer toward qemu is bounded: drain() waits above this, and so does reading the browser.
        writer.transport.set_write_buffer_limits(high=api.cfg.console.buffer_bytes)
        try:
            await rfb.authenticate(reader, writer, password)
        finally:
            # Whatever happened, the password just used is replaced by one nobody knows, already expired.
            await run_in_threadpool(link.set_vnc_password, dom, one_time_password(), -1)
        browser = WsBytes(websocket)
        try:
            await rfb.offer_none(browser.read, browser.send)
        except (rfb.RfbError, TimeoutError) as exc:
            raise ConsoleUnavailable(f"the browser's VNC handshake failed: {exc}") from None
        if browser.pending:
            writer.write(browser.pending)

        async def from_vm() -> bytes | None:
            return await reader.read(READ_CHUNK) or None

        async def to_vm(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        return await _relay(_pump(from_vm, browser.send), _pump(browser.message, to_vm))
    except rfb.RfbError as exc:
        raise ConsoleUnavailable(str(exc)) from None
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await writer.wait_closed()


async def _serial(websocket: WebSocket, api: ApiState, link: HostLink, dom: object) -> str:
    loop = asyncio.get_running_loop()
    stream = await run_in_threadpool(SerialStream, link, dom, loop, api.cfg.console.buffer_bytes)
    browser = WsBytes(websocket)

    async def from_vm() -> bytes | None:
        data = await stream.queue.get()
        return data

    async def to_browser(data: bytes) -> None:
        await websocket.send_bytes(data)
        stream.taken(len(data))

    async def to_vm(data: bytes) -> None:
        await run_in_threadpool(stream.send, data)

    try:
        return await _relay(_pump(from_vm, to_browser), _pump(browser.message, to_vm))
    finally:
        await run_in_threadpool(stream.close)
