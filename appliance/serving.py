"""Several uvicorn servers in one event loop: the Kerberos API, the node-facing HTTPS service, boot HTTP.

One loop and one signal handler for all of them, so SIGTERM drains every listener and `drover serve`
returns 0, and a port that is taken is reported before anything starts listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from appliance.errors import UsageError
from appliance.text import shown

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the group installs one handler for every server.

    uvicorn would also re-deliver SIGTERM/SIGINT once it has drained, killing us with a signal instead
    of letting `drover serve` return 0 after a clean stop.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class Listener:
    name: str
    server: _Server
    sock: socket.socket
    url: str


def bind(host: str, port: int, setting: str) -> socket.socket:
    """Bind the listening socket ourselves: uvicorn would sys.exit() on a taken port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}", f"stop whatever holds the port or set {setting}"
        ) from None
    sock.listen(512)
    return sock


class _BoundedAccessLog(logging.Filter):
    """uvicorn's access line carries the request path and query as the client sent them: a 60 KB query
    would be logged whole. Each argument is cut and escaped (appliance.text) first."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(shown(a, ACCESS_LOG_LIMIT) if isinstance(a, str) else a for a in record.args)
        return True


ACCESS_LOG_LIMIT = 200
logging.getLogger("uvicorn.access").addFilter(_BoundedAccessLog())


def listener(name: str, app: Any, sock: socket.socket, *, certfile: str = "", keyfile: str = "") -> Listener:
    tls = {"ssl_certfile": certfile, "ssl_keyfile": keyfile} if certfile else {}
    # httptools named, not left to "auto": without it uvicorn falls back to h11 in Python without a word.
    config = uvicorn.Config(app, log_config=None, lifespan="on", server_header=False, http="httptools",
                            **tls)  # type: ignore[arg-type]  # fmt: skip
    host, port = sock.getsockname()[:2]
    return Listener(name, _Server(config), sock, f"{'https' if certfile else 'http'}://{host}:{port}")


class Group:
    """Runs listeners together; stop() (or SIGTERM/SIGINT in the main thread) drains them all."""

    def __init__(self, listeners: Sequence[Listener], on_stop: Sequence[Callable[[], None]] = ()) -> None:
        self.listeners = list(listeners)
        # Called first by stop(): e.g. ending the UI's event streams, which would otherwise hold the drain.
        self.on_stop = list(on_stop)

    def stop(self) -> None:
        for hook in self.on_stop:
            hook()
        for item in self.listeners:
            item.server.force_exit = item.server.should_exit  # a second stop skips the drain
            item.server.should_exit = True

    @property
    def started(self) -> bool:
        return all(item.server.started for item in self.listeners)

    async def _serve(self) -> None:
        await asyncio.gather(*(item.server.serve(sockets=[item.sock]) for item in self.listeners))

    def run(self) -> None:
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(sig: int, frame: FrameType | None) -> None:
                log.info("got %s, stopping", signal.Signals(sig).name)
                self.stop()

            previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            asyncio.run(self._serve())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for item in self.listeners:
                item.sock.close()
