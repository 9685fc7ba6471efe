"""The host browser: one session per approved host, tended by one thread, connected by a few workers.

Whom to connect to comes from the database: every approved host (by a token or an admin) that has
collected its credentials. A heartbeat (appliance.api.nodes) or a `_libvirt._tcp` announcement
(hostbrowser.mdns) nudges the browser to connect that host now. The browser thread never calls into
libvirt to connect: connects run in hostbrowser.connecting's pool, so one host that never answers
holds up no other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import libvirt
from sqlalchemy import Engine, select

from appliance.config import Config
from appliance.db.engine import session_scope
from appliance.db.models import Host
from appliance.errors import DroverError
from hostbrowser import loop
from hostbrowser.connecting import ConnectPool
from hostbrowser.session import Connector, HostSession, Target
from hostbrowser.sync import Writer

log = logging.getLogger(__name__)

NUDGED_SCAN_SECONDS = 1.0


def targets(engine: Engine, default_port: int) -> list[Target]:
    with session_scope(engine) as s:
        rows = s.execute(
            select(Host.id, Host.hostname, Host.libvirt_port).where(
                Host.approved_at.is_not(None), Host.credentials_issued_at.is_not(None)
            )
        ).all()
    return [Target(i, name, f"qemu+tcp://{name}:{port or default_port}/system") for i, name, port in rows]


class HostBrowser:
    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        connector: Connector | None = None,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        """`refresh` gets the appliance a fresh TGT in a fresh ccache (dropping cached service tickets)."""
        self.cfg = cfg
        self.engine = engine
        self.connector: Connector = connector or libvirt.open
        self.refresh = refresh
        self._refreshed = float("-inf")
        self._refresh_lock = threading.Lock()
        self.writer = Writer(engine)
        self.pool = ConnectPool(cfg.hostbrowser.connect_workers, cfg.hostbrowser.connect_timeout_seconds)
        self.sessions: dict[int, HostSession] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # cuts the loop's sleep short
        self._scan_asked = threading.Event()
        self._nudged: set[int] = set()
        self._nudge_lock = threading.Lock()
        self._addresses_at = 0.0
        self._thread = threading.Thread(target=self._run, name="hostbrowser", daemon=True)

    def start(self) -> None:
        if self.connector is libvirt.open:
            loop.ensure_running()
        self.writer.start()
        self.pool.start()
        self._thread.start()
        log.info("host browser started")

    def wake(self) -> None:
        """Look at the database now (e.g. right after an approval) instead of at the next scan."""
        self._scan_asked.set()
        self._wake.set()

    def nudge(self, host_id: int) -> None:
        """The host shows signs of life (a heartbeat, a zeroconf announcement): if its session is down, connect
        now rather than reconnect_seconds after the last attempt; if it has none yet, read the database now.
        Cheap and thread-safe: called from the node service for every heartbeat of an approved host."""
        with self._nudge_lock:
            self._nudged.add(host_id)
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(30)
        self.pool.stop()
        for session in self.sessions.values():
            session.close()
        self.writer.stop()
        log.info("host browser stopped")

    def _run(self) -> None:
        hb = self.cfg.hostbrowser
        last_scan = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            with self._nudge_lock:
                nudged, self._nudged = self._nudged, set()
            # A nudged host without a session was approved since the last scan; many heartbeats of hosts the
            # scan leaves out must not turn into a scan each, hence at most one such scan a second.
            unknown = {h for h in nudged if h not in self.sessions}
            if (
                now - last_scan >= hb.scan_seconds
                or self._scan_asked.is_set()
                or (unknown and now - last_scan >= NUDGED_SCAN_SECONDS)
            ):
                self._scan_asked.clear()
                last_scan = now
                self.scan()
            elif unknown:
                with self._nudge_lock:
                    self._nudged |= unknown  # for the scan a moment later
            for host_id in nudged:
                # Only a session that is down and idle: a connect already under way is the answer to the nudge.
                session = self.sessions.get(host_id)
                if session is not None and session.down_since is not None and not self.pool.busy(host_id):
                    session.nudged = True
            self.tend(now, hb.reconnect_seconds)
            if hb.addresses_seconds and now - self._addresses_at >= hb.addresses_seconds:
                self._addresses_at = now
                self.poll_addresses()
            self._wake.wait(0.2)

    def scan(self) -> None:
        """Start sessions for newly approved hosts, close those no longer wanted."""
        try:
            wanted = {t.host_id: t for t in targets(self.engine, self.cfg.nodes.libvirt_port)}
        except DroverError as exc:
            log.error("host browser cannot read hosts: %s", exc)
            return
        for host_id in set(self.sessions) - set(wanted):
            self.sessions.pop(host_id).close()
        hb = self.cfg.hostbrowser
        for host_id, target in wanted.items():
            current = self.sessions.get(host_id)
            if current is not None and current.target == target:
                continue
            if current is not None:
                current.close()  # renamed or moved to another port: start over
            session = HostSession(target, self.writer, self.connector, (hb.keepalive_interval, hb.keepalive_count))
            self.sessions[host_id] = session
            if not self._submit(session):
                session.nudged = True  # the session it replaces is still connecting: right after that one

    def tend(self, now: float, retry_after: float) -> None:
        """Give up on hung connects; re-connect sessions that went down, each at most every `retry_after`
        seconds (at once when nudged), never while an earlier attempt for the host is in flight."""
        self.pool.expire(now)
        for session in list(self.sessions.values()):
            down = session.down_since
            if down is None or self.pool.busy(session.target.host_id):
                continue
            session.reap()
            if (session.nudged or now - down >= retry_after) and not self._stop.is_set():
                self._submit(session)

    def poll_addresses(self) -> None:
        """Each connected host's running VMs' addresses, asked in the connect pool (never in this thread)."""
        for session in list(self.sessions.values()):
            if session.connected and not self.pool.busy(session.target.host_id):
                self.pool.submit(session.target.host_id, session.poll_addresses, lambda: None)

    def _submit(self, session: HostSession) -> bool:
        timeout = self.cfg.hostbrowser.connect_timeout_seconds
        if self.pool.submit(session.target.host_id, lambda: self._connect(session), lambda: session.abandon(timeout)):
            session.nudged = False
            return True
        return False

    def _connect(self, session: HostSession) -> bool:
        """Connect; if the host refused our Kerberos ticket, get fresh credentials once and try again.

        A node gets a new key (kvno) every time it enrols, i.e. at every reboot, while the appliance's
        ccache still holds a service ticket for the old key, valid for hours: without dropping it the
        rebooted node refuses us until that ticket expires. Refreshing is at most every reconnect period.
        """
        started = time.monotonic()
        if session.connect():
            return True
        if not session.auth_failed or self.refresh is None:
            return False
        # In a connect worker: several may be refused at once, and one fresh ticket serves them all.
        with self._refresh_lock:
            now = time.monotonic()
            if self._refreshed >= started:
                pass  # another worker got fresh credentials while we were being refused: try with those
            elif now - self._refreshed < self.cfg.hostbrowser.reconnect_seconds:
                return False
            else:
                self._refreshed = now
                log.info("%s refused our Kerberos ticket: getting fresh credentials and trying again",
                         session.target.hostname)  # fmt: skip
                try:
                    self.refresh()
                except DroverError as exc:
                    log.error("refreshing the libvirt client ticket failed: %s", exc)
                    return False
        return session.connect()

    def status(self) -> dict[str, Any]:
        return {
            "hosts": len(self.sessions),
            "connected": sum(1 for s in self.sessions.values() if s.connected),
            "changes_applied": self.writer.applied,
            "connects": self.pool.status(),
        }
