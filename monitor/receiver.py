"""The UDP receiver: one thread reads datagrams into a bounded queue, another decodes, verifies and hands on.

The reader does nothing but recv and append, so a slow decoder or a slow TSDB never leaves the
kernel's buffer unread: a full queue drops the newest datagram and counts it. Counters cover what
was read, what decoded, what was refused (by failure kind and by user) and what the kernel itself
dropped on our socket (/proc/net/udp `drops`, and the system's UDP RcvbufErrors).
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import UsageError
from monitor.protocol import MAX_DATAGRAM, Failure, Notification, ValueList
from monitor.security import Verifier

log = logging.getLogger(__name__)

# Hands on a datagram's accepted value lists; runs in the decoder thread, so it must not block long.
Sink = Callable[[list[ValueList]], None]
# The host a collectd user may speak for, or None if there is no such user.
HostOf = Callable[[str], str | None]


@dataclass(frozen=True)
class ReceiverSettings:
    listen: str = "0.0.0.0"
    port: int = 25826
    receive_buffer_bytes: int = 8 << 20
    queue_packets: int = 4096  # ~6 MB of 1452-byte datagrams; the kernel buffer holds as much again


_STALE_SECRET = frozenset({Failure.BAD_SIGNATURE, Failure.BAD_CHECKSUM})


class Counters:
    """The receiver's own figures; each field has one writer thread, readers take a snapshot."""

    def __init__(self) -> None:
        self.packets = 0  # read from the socket
        self.bytes = 0
        self.queue_drops = 0  # read, but the queue was full
        self.decoded = 0  # taken off the queue and decoded
        self.values = 0  # accepted values (a value list of 3 is 3)
        self.value_lists = 0
        self.notifications = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.failures_by_user: collections.Counter[tuple[str, str]] = collections.Counter()


class Receiver:
    def __init__(
        self,
        settings: ReceiverSettings,
        verifier: Verifier,
        sink: Sink,
        host_of: HostOf,
        on_notification: Callable[[Notification], None] | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.sink = sink
        self.host_of = host_of
        self.on_notification = on_notification
        # Called when a known user's check failed: its secret may have changed (a re-enrolled node).
        self.on_refused = on_refused
        self.counters = Counters()
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sock: socket.socket | None = None
        self._kernel_drops = 0

    @property
    def address(self) -> tuple[str, int]:
        if self.sock is None:
            raise RuntimeError("receiver not started")
        host, port = self.sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.settings.listen else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.settings.listen, self.settings.port))
        except OSError as exc:
            sock.close()
            raise UsageError(
                f"cannot receive collectd on udp {self.settings.listen}:{self.settings.port}: {exc.strerror}",
                "stop whatever holds the port or set [monitor] port",
            ) from None
        _set_receive_buffer(sock, self.settings.receive_buffer_bytes)
        sock.settimeout(0.2)  # so stop() is noticed without a packet arriving
        self.sock = sock
        self._threads = [
            threading.Thread(target=self._read, name="monitor-reader", daemon=True),
            threading.Thread(target=self._decode, name="monitor-decoder", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("receiving collectd on udp %s:%s (%s)", *self.address, self.verifier.level)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(5)
        if self.sock is not None:
            self.sock.close()

    def idle(self) -> bool:
        """Nothing queued (the bench and tests wait for this before reading the counters)."""
        return not self._queue

    @property
    def queued(self) -> int:
        """Datagrams read but not yet decoded."""
        return len(self._queue)

    def _read(self) -> None:
        assert self.sock is not None  # start() set it before starting this thread
        recv = self.sock.recv
        queue = self._queue
        limit = self.settings.queue_packets
        wake = self._wake
        counters = self.counters
        while not self._stop.is_set():
            try:
                data = recv(MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("collectd socket: %s", exc)
                continue
            counters.packets += 1
            counters.bytes += len(data)
            if len(queue) >= limit:
                counters.queue_drops += 1
                continue
            queue.append(data)
            wake.set()

    def _decode(self) -> None:
        queue = self._queue
        while not self._stop.is_set():
            try:
                data = queue.popleft()
            except IndexError:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            try:
                self.handle(data)
            except Exception:  # a bug must cost one datagram, not the receiver
                log.exception("collectd datagram of %d bytes not handled", len(data))
                self.counters.failures["internal"] += 1

    def handle(self, data: bytes) -> None:
        counters = self.counters
        counters.decoded += 1
        out = self.verifier.decode(data)
        accepted = out.values
        if accepted and any(vl.user for vl in accepted):
            accepted = self._own_hosts(accepted, out.failures)
        for kind, user in out.failures:
            counters.failures[kind] += 1
            if user:
                counters.failures_by_user[(user, kind)] += 1
                if kind in _STALE_SECRET and self.on_refused is not None:
                    self.on_refused()
        if accepted:
            counters.value_lists += len(accepted)
            counters.values += sum(len(vl.values) for vl in accepted)
            self.sink(accepted)
        for note in out.notifications:
            if note.user and self.host_of(note.user) != note.host:
                counters.failures[Failure.HOST_MISMATCH] += 1
                counters.failures_by_user[(note.user, Failure.HOST_MISMATCH)] += 1
                continue
            counters.notifications += 1
            if self.on_notification is not None:
                self.on_notification(note)

    def _own_hosts(self, values: list[ValueList], failures: list[tuple[Failure, str]]) -> list[ValueList]:
        """Only value lists a user may speak for: its own host's. Another host's name is refused."""
        kept: list[ValueList] = []
        allowed: dict[str, str | None] = {}
        for vl in values:
            if not vl.user:
                kept.append(vl)
                continue
            if vl.user not in allowed:
                allowed[vl.user] = self.host_of(vl.user)
            if allowed[vl.user] == vl.host:
                kept.append(vl)
            else:
                failures.append((Failure.HOST_MISMATCH, vl.user))
        return kept

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped on this socket (its receive buffer was full); the last figure once closed."""
        if self.sock is not None and self.sock.fileno() >= 0:
            self._kernel_drops = socket_drops(self.sock)
        return self._kernel_drops


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    # SO_RCVBUFFORCE (root, or CAP_NET_ADMIN) goes past net.core.rmem_max; SO_RCVBUF is capped by it.
    force = getattr(socket, "SO_RCVBUFFORCE", 33)
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if got < size:
        log.warning("collectd receive buffer is %d bytes, not %d (raise net.core.rmem_max)", got, size)


def socket_drops(sock: socket.socket) -> int:
    """The `drops` column of /proc/net/udp{,6} for this socket's inode."""
    inode = str(_inode(sock))
    for name in ("udp", "udp6"):
        path = Path("/proc/net") / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 13 and fields[9] == inode:
                return int(fields[12])
    return 0


def _inode(sock: socket.socket) -> int:
    return Path(f"/proc/self/fd/{sock.fileno()}").stat().st_ino


def udp_rcvbuf_errors() -> int:
    """The system-wide UDP RcvbufErrors (/proc/net/snmp): every socket's kernel drops, ours included."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    if len(lines) < 2:
        return 0
    table = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return int(table.get("RcvbufErrors", 0))
