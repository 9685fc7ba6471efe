"""The one place the appliance starts its daemons' code: the host browser and the task engine run as threads
of `drover serve`.

A thread rather than its own process: it shares the server's configuration, realm and database
engine, and the lab and `make demo` have one process to start and stop. libvirt's event loop, the
DB writer and the connection loop are each one daemon thread, so the API's event loop never waits
on a host. Imported lazily, so `appliance` never imports `hostbrowser` at module level.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from appliance.config import Config
from appliance.db.engine import make_engine
from appliance.errors import DroverError
from appliance.kerberos.realm import Realm
from appliance.libvirtclient import ClientTicket

if TYPE_CHECKING:
    from appliance.fencer import Fencer
    from hostbrowser.browser import HostBrowser
    from hostbrowser.mdns import ZeroconfWatcher
    from monitor.service import Monitor
    from taskengine.worker import Worker

log = logging.getLogger(__name__)


class RunningBrowser:
    def __init__(self, browser: HostBrowser, ticket: ClientTicket, mdns: ZeroconfWatcher | None = None) -> None:
        self.browser = browser
        self.ticket = ticket
        self.mdns = mdns

    def wake(self) -> None:
        """Make the browser read the database now (the API calls this after removing a host)."""
        self.browser.wake()

    def nudge(self, host_id: int) -> None:
        """The host heartbeats: if its libvirt session is down, reconnect now (the node service calls this)."""
        self.browser.nudge(host_id)

    def stop(self) -> None:
        if self.mdns is not None:
            self.mdns.stop()
        self.browser.stop()
        self.ticket.stop()
        self.browser.engine.dispose()


def start_hostbrowser(cfg: Config, realm: Realm) -> RunningBrowser | None:
    """Start the host browser with the appliance's own libvirt credentials; None (logged) if it cannot."""
    from hostbrowser.browser import HostBrowser  # noqa: PLC0415 - the launcher is the one allowed importer
    from hostbrowser.mdns import ZeroconfWatcher  # noqa: PLC0415

    ticket = ClientTicket(realm, cfg.state_dir / "hostbrowser" / "libvirt.ccache", "hostbrowser-ticket")
    try:
        ticket.start()
    except DroverError as exc:
        log.error("host browser not started: %s", exc)
        return None
    browser = HostBrowser(cfg, make_engine(cfg.database_url), refresh=ticket.acquire)
    browser.start()
    mdns = None
    if cfg.hostbrowser.zeroconf:
        mdns = ZeroconfWatcher(cfg, browser.engine, browser.nudge, browser.wake)
        try:
            mdns.start()
        except Exception as exc:  # no multicast here: heartbeats and scans still find every host
            log.error("not browsing _libvirt._tcp with zeroconf: %s", exc)
            mdns.stop()
            mdns = None
    return RunningBrowser(browser, ticket, mdns)


class RunningTaskEngine:
    """The task engine's worker threads in this process, with the libvirt client ticket they use."""

    def __init__(self, worker: Worker, ticket: ClientTicket) -> None:
        self.worker = worker
        self.ticket = ticket

    def stop(self) -> None:
        self.worker.stop()
        self.ticket.stop()
        self.worker.engine.dispose()


def start_taskengine(cfg: Config, realm: Realm, workers: int | None = None) -> RunningTaskEngine | None:
    """Start the task engine's worker threads with the appliance's libvirt credentials; None (logged) if it cannot."""
    from taskengine.worker import Worker  # noqa: PLC0415 - the launcher is the one allowed importer

    ticket = ClientTicket(realm, cfg.state_dir / "taskengine" / "libvirt.ccache", "taskengine-ticket")
    try:
        ticket.start()
    except DroverError as exc:
        log.error("task engine not started: %s", exc)
        return None
    worker = Worker(make_engine(cfg.database_url), cfg.taskengine, cfg.nodes.libvirt_port)
    worker.start(workers)
    return RunningTaskEngine(worker, ticket)
def start_fencer(cfg: Config) -> Fencer:
    """The fencer thread (appliance.fencer): it reads what the host browser writes, and powers hosts off."""
    from appliance.fencer import Fencer  # noqa: PLC0415 - kept beside its siblings' lazy imports

    fencer = Fencer(cfg, make_engine(cfg.database_url))
    fencer.start()
    return fencer


def start_monitor(cfg: Config) -> Monitor:
    """The collectd receiver, its TSDB writer and (by default) the embedded VictoriaMetrics.

    Unlike the host browser a failure here stops `drover serve` (a taken UDP port, no victoria-metrics):
    an appliance that silently drops every node's metrics is worse than one that says why it cannot start.
    """
    from monitor.service import Monitor  # noqa: PLC0415 - the launcher is the one allowed importer

    monitor = Monitor(cfg, make_engine(cfg.database_url))
    try:
        monitor.start()
    except BaseException:
        monitor.engine.dispose()
        raise
    return monitor
