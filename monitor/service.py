"""The monitor as `drover serve` runs it: receiver, TSDB writer (and embedded TSDB), users and load from the DB.

One background thread keeps the collectd user table fresh (every few seconds, and at once when an
unknown user shows up, so a node enrolled a moment ago is not refused for long) and writes each
host's load to the database every [monitor] load_seconds.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path

from sqlalchemy import Engine

from appliance import monitoring
from appliance.config import Config
from appliance.db.engine import session_scope
from appliance.errors import DroverError
from monitor import typesdb
from monitor.load import LoadTracker
from monitor.protocol import Notification, SecurityLevel, ValueList
from monitor.receiver import Receiver, ReceiverSettings, udp_rcvbuf_errors
from monitor.security import Verifier
from monitor.series import Namer
from monitor.tsdb import Embedded, Writer, WriterSettings

log = logging.getLogger(__name__)

USERS_REFRESH_SECONDS = 5.0


class Users:
    """collectd users from the database, as the verifier and the host check read them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._table: dict[str, monitoring.CollectdUser] = {}
        self.stale = threading.Event()

    def refresh(self) -> None:
        with session_scope(self.engine) as s:
            self._table = monitoring.collectd_users(s)

    def password(self, user: str) -> bytes | None:
        found = self._table.get(user)
        if found is None:
            self.stale.set()  # read the table again soon: this node may have enrolled a moment ago
            return None
        return found.secret.encode()

    def host_of(self, user: str) -> str | None:
        found = self._table.get(user)
        return found.hostname if found is not None else None


class Monitor:
    def __init__(self, cfg: Config, engine: Engine) -> None:
        m = cfg.monitor
        self.cfg = cfg
        self.engine = engine
        self.embedded: Embedded | None = None
        if not m.tsdb_url:
            data = Path(m.tsdb_dir).expanduser() if m.tsdb_dir else cfg.state_dir / "tsdb"
            self.embedded = Embedded(data, "127.0.0.1", m.tsdb_port, m.retention, data / "victoria-metrics.log")
        self.tsdb_url = m.tsdb_url or (self.embedded.url if self.embedded else "")
        self.namer = Namer(typesdb.load(Path(m.types_db) if m.types_db else None))
        self.writer = Writer(self.tsdb_url, WriterSettings(m.batch_samples, m.flush_ms, m.buffer_samples))
        self.users = Users(engine)
        self.loads = LoadTracker()
        self.unknown_type = 0
        self.receiver = Receiver(
            ReceiverSettings(m.listen, m.port, m.receive_buffer_bytes, m.queue_packets),
            Verifier(SecurityLevel(m.security_level), self.users.password),
            self._store,
            self.users.host_of,
            self._notice,
            self.users.stale.set,
        )
        # Notifications wait here for the background thread to write them as host events; a flood is cut.
        self._notices: collections.deque[monitoring.HostNotice] = collections.deque(maxlen=1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, name="monitor-db", daemon=True)

    def _store(self, values: list[ValueList]) -> None:
        unknown: list[ValueList] = []
        self.writer.add(self.namer.lines(values, unknown))
        if unknown:
            self.unknown_type += len(unknown)
        self.loads.observe(values)

    def _notice(self, note: Notification) -> None:
        source = "/".join(
            p for p in (note.plugin + (f"-{note.plugin_instance}" if note.plugin_instance else ""),
                        note.type + (f"-{note.type_instance}" if note.type_instance else "")) if p
        )  # fmt: skip
        self._notices.append(monitoring.HostNotice(note.host, note.severity.name.lower(), source, note.message))

    def start(self) -> None:
        self.users.refresh()
        if self.embedded is not None:
            self.embedded.start()
        try:
            self.writer.start()
            self.receiver.start()
        except BaseException:
            self.stop()
            raise
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.users.stale.set()
        self.receiver.stop()
        if self._thread.is_alive():
            self._thread.join(10)
        self.writer.stop()
        if self.embedded is not None:
            self.embedded.stop()

    def _background(self) -> None:
        load_every = max(1, self.cfg.monitor.load_seconds)
        next_users = next_load = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            woke = self.users.stale.wait(max(0.0, min(next_users, next_load) - now))
            self.users.stale.clear()
            now = time.monotonic()
            try:
                if woke or now >= next_users:
                    self.users.refresh()
                    next_users = now + USERS_REFRESH_SECONDS
                if now >= next_load or self._stop.is_set():
                    self.flush_load()
                    next_load = now + load_every
            except DroverError as exc:
                log.warning("monitor: database: %s", exc)
            if woke:
                self._stop.wait(1.0)  # at most one table read a second, however many unknown users knock

    def flush_load(self) -> int:
        """Write each host's load and the notifications that came in; returns the host rows updated."""
        loads = self.loads.take()
        notices = [self._notices.popleft() for _ in range(len(self._notices))]
        if not loads and not notices:
            return 0
        with session_scope(self.engine) as s:
            if notices:
                monitoring.record_notices(s, notices)
            return monitoring.record_load(s, loads) if loads else 0

    def stats(self) -> dict[str, object]:
        """Every counter of the receiver and the writer, for /metrics and `drover monitor status`."""
        c = self.receiver.counters
        return {
            "packets": c.packets,
            "bytes": c.bytes,
            "decoded": c.decoded,
            "values": c.values,
            "value_lists": c.value_lists,
            "notifications": c.notifications,
            "queue_drops": c.queue_drops,
            "queued": self.receiver.queued,
            "kernel_drops": self.receiver.kernel_drops(),
            "udp_rcvbuf_errors": udp_rcvbuf_errors(),
            "unknown_type": self.unknown_type,
            "failures": dict(c.failures),
            "failures_by_user": [
                {"user": user, "kind": kind, "count": n} for (user, kind), n in sorted(c.failures_by_user.items())
            ],
            "tsdb_url": self.tsdb_url,
            "stored": self.writer.stored,
            "tsdb_buffered": self.writer.buffered,
            "tsdb_dropped": self.writer.dropped,
            "tsdb_write_errors": self.writer.write_errors,
            "tsdb_last_error": self.writer.last_error,
        }
