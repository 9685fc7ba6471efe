"""The node agent's state machine: discover -> identify (pending: heartbeat until approved) -> install
credentials -> configure + restart libvirtd -> announce -> heartbeat + watch. SIGTERM stops it at once.

Every path is an option so a test can run the real agent as a child process in a temp dir.
`main()` is the entry point (nodeagent/__main__.py calls it on the node).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from nodeagent import (
    cmdline,
    collectd,
    credentials,
    discovery,
    facts,
    heartbeat,
    libvirtd,
    netsetup,
    session,
    tls,
    wire,
)
from nodeagent.announce import Announcer, ipv4_addresses
from nodeagent.files import write_atomic
from nodeagent.identify import ApplianceError, NodeApiClient
from nodeagent.notify import Readiness
from nodeagent.proc import CommandFailed, run
from nodeagent.watch import Watcher

log = logging.getLogger("nodeagent")

AGENT_VERSION = "0.1.0"


class State(enum.StrEnum):
    DISCOVER = "discover"
    IDENTIFY = "identify"
    PENDING = "pending"  # recorded by the appliance, heartbeating until an admin approves
    CONFIGURE = "configure"  # credentials arrived: keytab, libvirtd, restart, announce
    RUNNING = "running"  # heartbeating with libvirtd up
    REFUSED = "refused"  # the CA did not match the pin: nothing was sent; retried after a pause
    STOPPED = "stopped"


@dataclass(frozen=True)
class Options:
    root: Path = Path("/")  # where facts are read (sysfs/procfs)
    config_root: Path = Path("/")  # prefix for krb5.conf, keytab, libvirtd.conf, SASL config
    cmdline: Path = cmdline.PROC_CMDLINE
    state_file: Path = Path("/run/drover/agent.json")
    restart: str = "systemd"  # systemd | command | none
    restart_command: str = ""
    libvirt_address: str = "127.0.0.1"  # where "is libvirtd listening" is checked
    libvirt_port: int = 16509
    announce: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    discovery: discovery.DiscoverySettings = field(default_factory=discovery.DiscoverySettings)
    schedule: heartbeat.Schedule = field(default_factory=heartbeat.Schedule)
    refused_pause: float = 30.0  # after a pin mismatch, before fetching the CA again
    request_timeout: float = 10.0
    ready_deadline: float = 45.0  # READY=1 to systemd at the latest this long after start (see notify.py)
    network_wait: float = 60.0  # for a routable address before gathering facts (see _wait_for_network)
    # Apply the appliance's network set-up (bridges, VLANs, bonds) with systemd-networkd. Only on a real
    # node: an agent under a test's --config-root must never reconfigure the machine running the test.
    manage_network: bool = True


class Agent:
    def __init__(self, opts: Options, stop: threading.Event | None = None) -> None:
        self.opts = opts
        self.stop = stop or threading.Event()
        self.session_end = threading.Event()  # set by stop or when the appliance has forgotten us
        self.creds_paths = credentials.CredentialPaths().under(opts.config_root)
        self.libvirtd_paths = libvirtd.LibvirtdPaths().under(opts.config_root)
        self.collectd_paths = collectd.CollectdPaths().under(opts.config_root)
        self.restarter = self._restarter()
        self.announcer = Announcer(opts.mdns_interfaces)
        self.watcher: Any = None
        self.lock = threading.RLock()
        self.creds: wire.Credentials | None = None
        self.facts: wire.Facts | None = None
        self.libvirt_ready = False
        self.restart_failed = False  # retried at every heartbeat until it works
        self.status: dict[str, Any] = {
            "state": State.DISCOVER.value,
            "heartbeats": 0,
            "errors": 0,
            "reinstalls": 0,
            "restarts": 0,
            "pid": 0,
        }
        self.started = time.monotonic()
        self.readiness = Readiness(opts.ready_deadline)
        self.prepared = False  # libvirtd set up from the kernel command line before enrolment (see _prepare)
        self.network: netsetup.Keeper | None = None
        if opts.manage_network and opts.config_root == Path("/"):
            links = netsetup.Links()
            self.network = netsetup.Keeper(netsetup.Applier(opts.config_root, links), self.stop)

    # --- state file ---------------------------------------------------------------------------

    @property
    def session_file(self) -> Path:
        """This boot's enrolment (nodeagent/session.py), beside the state file."""
        return self.opts.state_file.with_name("session.json")

    def _set(self, **values: Any) -> None:
        with self.lock:
            self.status.update({k: (v.value if isinstance(v, enum.Enum) else v) for k, v in values.items()})
            self.status["libvirt_ready"] = self.libvirt_ready
            data = json.dumps(self.status, indent=1, sort_keys=True).encode()
        try:
            write_atomic(self.opts.state_file, data, 0o644)
        except OSError as exc:
            log.warning("cannot write state file %s: %s", self.opts.state_file, exc)

    def _restarter(self) -> libvirtd.Restarter:
        if self.opts.restart == "command":
            return libvirtd.CommandRestarter(shlex.split(self.opts.restart_command))
        if self.opts.restart == "none":
            return libvirtd.NoRestarter()
        return libvirtd.SystemdRestarter()

    # --- the machine --------------------------------------------------------------------------

    def run(self) -> None:
        self._set(pid=os.getpid())
        self.readiness.start()
        kcmd = cmdline.read(self.opts.cmdline)
        if session.load(self.session_file, kcmd.token) is None:
            self._prepare(kcmd)
        else:  # restarted within this boot: libvirtd already runs with our keytab; leave it and its guests be
            log.info("this boot's enrolment is in %s: resuming it", self.session_file)
        ip_json = self._wait_for_network() if self.opts.root == Path("/") else ""
        self.facts = facts.gather(self.opts.root, ip_json=ip_json, boot_mac=kcmd.boot_mac, agent_version=AGENT_VERSION)
        log.info(
            "facts in %.1fs: uuid %s fqdn %s, %s CPUs (%s), %s NICs, %s disks",
            time.monotonic() - self.started,
            self.facts.uuid,
            self.facts.fqdn,
            self.facts.cpu.count,
            self.facts.cpu.virtualization or "no virtualization",
            len(self.facts.nics),
            len(self.facts.disks),
        )
        errors = 0
        while not self.stop.is_set():
            self.session_end.clear()
            try:
                self._session(kcmd, self.facts)
                errors = 0
            except tls.PinError as exc:
                self._set(state=State.REFUSED, last_error=str(exc))
                self.readiness.ready(f"refused: {exc}")
                self.stop.wait(self.opts.refused_pause)
            except (discovery.DiscoveryError, tls.FetchError, ApplianceError, OSError) as exc:
                errors += 1
                log.warning("enrolment failed (%s in a row): %s", errors, exc)
                self._set(errors=self.status["errors"] + 1, last_error=str(exc))
                self.readiness.ready(f"not enrolled, retrying: {exc}")
                self.stop.wait(self.opts.schedule.next_delay(self.opts.schedule.error_max, errors))
        self.shutdown()

    def _prepare(self, kcmd: cmdline.KernelCmdline) -> None:
        """With drover.libvirt_allow on the kernel line, set libvirtd up for Kerberos on TCP now, with an
        empty keytab, and let systemd start it: it starts once, while the node is still getting an address
        and enrolling, and takes the real keytab when identify brings it (read at each authentication)."""
        if not kcmd.libvirt_allow:
            return
        with self.lock:
            credentials.ensure_keytab(self.creds_paths.keytab)
            libvirtd.configure(self.libvirtd_paths, self.creds_paths.keytab, kcmd.libvirt_allow)
            self._restart()
            self.prepared = not self.restart_failed
        if self.prepared:
            self.readiness.ready(f"libvirtd set up for {','.join(kcmd.libvirt_allow)} from the kernel command line")

    def _wait_for_network(self) -> str:
        """`ip -j addr` once an address is up, or after `network_wait` seconds.

        The unit is not ordered after network-online.target: the interpreter's start-up (seconds on a
        small or emulated node) then overlaps DHCP instead of following it, on the way to enrolment.
        """
        deadline = time.monotonic() + self.opts.network_wait
        ip_json = ""
        while not self.stop.is_set():
            try:
                ip_json = run(["ip", "-j", "addr", "show"])
            except CommandFailed as exc:
                log.warning("no addresses: %s", exc)
                return ""
            if facts.has_routable_address(facts.parse_ip_json(ip_json)):
                self._wait_for_name(deadline)
                break
            if time.monotonic() > deadline:
                log.warning("no routable address after %.0fs: going on without one", self.opts.network_wait)
                break
            self.stop.wait(0.25)
        return ip_json

    def _wait_for_name(self, deadline: float) -> None:
        """The address can come a moment before networkd has set the hostname or saved the lease it came
        with: give the name a few seconds, or the host would be recorded as `localhost`."""
        until = min(deadline, time.monotonic() + 5.0)
        while "." not in facts.names(self.opts.root)[1] and time.monotonic() < until and not self.stop.is_set():
            self.stop.wait(0.25)

    def _session(self, kcmd: cmdline.KernelCmdline, node: wire.Facts) -> None:
        self._set(state=State.DISCOVER)
        found = discovery.discover(kcmd.appliance, node.fqdn, self.opts.discovery)
        log.info("appliance %s (from %s)", found.url, found.source)
        pinned = tls.fetch_ca(found.url, kcmd.ca_sha256, self.opts.request_timeout, kcmd.params.get("drover.api", ""))
        client = NodeApiClient(pinned.api_url, pinned.context(), self.opts.request_timeout)
        self._set(state=State.IDENTIFY, appliance=found.url, source=found.source, api_url=pinned.api_url)
        saved = session.load(self.session_file, kcmd.token)
        if saved is not None and saved.api_url == pinned.api_url:
            answer = saved.answer
            log.info("resuming this boot's enrolment as host %s (the agent was restarted)", answer.host_id)
        else:
            answer = client.identify(wire.IdentifyRequest(kcmd.token, node))
            log.info("identified as host %s: %s %s", answer.host_id, answer.status.value, answer.message)
        kept = session.Saved(session.boot_id(), kcmd.token, pinned.api_url, answer)
        session.save(self.session_file, kept)
        self._set(
            state=State.PENDING if answer.status is wire.IdentifyStatus.PENDING else State.CONFIGURE,
            host_id=answer.host_id,
            status=answer.status.value,
        )
        if answer.credentials is not None:
            self._apply(answer.credentials)
        else:
            self.readiness.ready(f"host {answer.host_id} {answer.status.value}, waiting for approval")

        def send(report: wire.NetworkReport | None) -> wire.HeartbeatResponse:
            return client.heartbeat(
                wire.Heartbeat(
                    node.uuid,
                    self._libvirt_ready(),
                    self.creds is not None,
                    self._uptime(),
                    agent_token=answer.agent_token,  # per-boot secret: the UUID alone gets no keytab
                    network=report,
                    libvirt_port=self.opts.libvirt_port,
                )
            )

        def confirm(report: wire.NetworkReport) -> bool:
            """A heartbeat carrying the new set-up's report: reaching the appliance is what keeps it."""
            try:
                send(report)
            except ApplianceError as exc:
                log.info("not confirmed yet: %s", exc)
                return False
            return True

        first_setup = answer.network

        def beat() -> float:
            nonlocal first_setup
            if self.restart_failed and self.creds is not None:
                with self.lock:
                    log.info("retrying the libvirtd restart that failed")
                    self._restart()
            if first_setup is not None:
                # At boot the set-up came with identify: applied now, confirmed by this session's heartbeats.
                self._network(first_setup, confirm)
                first_setup = None
            try:
                resp = send(self.network.refresh() if self.network is not None else None)
            except ApplianceError as exc:
                self._set(errors=self.status["errors"] + 1, last_error=str(exc))
                if exc.unknown_host:
                    log.warning("the appliance no longer knows this host: identifying again")
                    session.forget(self.session_file)
                    self.session_end.set()
                raise
            if resp.credentials is not None and resp.credentials != self.creds:
                log.info("credentials arrived with a heartbeat: host approved")
                self._apply(resp.credentials)
                approved = dataclasses.replace(kept.answer, status=resp.status, credentials=resp.credentials)
                session.save(self.session_file, dataclasses.replace(kept, answer=approved))
            if resp.restart_libvirtd and self.creds is not None:
                # The appliance cannot reach our libvirtd although we beat: oVirt's soft fencing, before
                # it powers this machine off through its BMC.
                log.warning("the appliance asks for a libvirtd restart (it cannot reach it)")
                with self.lock:
                    self._restart()
                self._set(soft_restarts=self.status.get("soft_restarts", 0) + 1)
            if resp.network is not None:
                self._network(resp.network, confirm)
            state = State.RUNNING if self.creds is not None else State.PENDING
            self._set(
                state=state,
                status=resp.status.value,
                heartbeats=self.status["heartbeats"] + 1,
                last_heartbeat=time.time(),
                interval=resp.heartbeat_seconds,
            )
            return float(resp.heartbeat_seconds)

        stop_relay = threading.Thread(target=self._relay_stop, daemon=True)
        stop_relay.start()
        heartbeat.loop(beat, self.session_end, self.opts.schedule, float(answer.heartbeat_seconds))

    def _relay_stop(self) -> None:
        """A stop ends the session too; the session's own end (re-identify) does not stop the agent."""
        while not self.session_end.is_set():
            if self.stop.wait(0.5):
                self.session_end.set()

    def _network(self, setup: wire.NetworkSetup, confirm: Callable[[wire.NetworkReport], bool]) -> None:
        if self.network is None:
            return
        try:
            self.network.handle(setup, confirm)
        except Exception:  # a daemon logs and carries on: the heartbeat must go on whatever `ip` said
            log.exception("network set-up %s: unexpected failure", setup.generation)
        report = self.network.report
        if report is not None:
            self._set(network_generation=report.generation, network_state=report.state.value,
                      network_message=report.message)  # fmt: skip

    # --- credentials and libvirtd -------------------------------------------------------------

    def _apply(self, creds: wire.Credentials) -> None:
        with self.lock:
            self._set(state=State.CONFIGURE)
            credentials.install(creds, self.creds_paths)
            reconfigured = libvirtd.configure(self.libvirtd_paths, self.creds_paths.keytab, creds.allowed_users)
            self.creds = creds
            # libvirtd reads the keytab and krb5.conf at every authentication: new keys need no restart,
            # only a changed libvirtd config does (or a libvirtd we have not started on this config).
            if reconfigured or not (self.prepared or self._libvirt_ready()):
                self._restart()
            if creds.collectd is not None:
                self._collectd(creds.collectd)
            # libvirtd may start now (at boot it waits for this); announcing and watching can follow.
            self.readiness.ready(f"Kerberos as {creds.principal}")
            if self.opts.announce and self.facts is not None:
                # zeroconf probes for its name for ~2 s: not on the way to the first heartbeat.
                threading.Thread(target=self._announce, args=(self.facts,), name="announce", daemon=True).start()
            if self.watcher is None:
                self.watcher = Watcher(
                    [
                        self.creds_paths.keytab,
                        self.creds_paths.krb5_conf,
                        self.libvirtd_paths.conf,
                        self.libvirtd_paths.sasl_conf,
                    ],
                    self._changed,
                )
                self.watcher.start()
            self._set(state=State.RUNNING, principal=creds.principal)

    def _collectd(self, settings: wire.Collectd) -> None:
        """Metrics are not worth failing enrolment for: a collectd that cannot be set up is logged."""
        if self.facts is None:
            return
        # The appliance knows this host by the FQDN the facts carried; the receiver accepts only that name.
        hostname = (self.facts.fqdn or self.facts.hostname).lower().rstrip(".")
        try:
            changed = collectd.configure(self.collectd_paths, collectd.render(settings, hostname))
            if changed and self.opts.restart == "systemd":
                collectd.restart()
        except Exception as exc:
            log.error("collectd not configured: %s", exc)

    def _announce(self, node: wire.Facts) -> None:
        try:
            addresses = ipv4_addresses([a for n in node.nics for a in n.addresses])
            self.announcer.announce(node.hostname, node.fqdn, node.uuid, addresses, self.opts.libvirt_port)
        except Exception:
            log.exception("zeroconf announcement failed; the appliance still has our heartbeat")

    def _restart(self) -> None:
        try:
            self.restarter.restart()
            self.libvirt_ready = libvirtd.listening(self.opts.libvirt_address, self.opts.libvirt_port)
            self.restart_failed = False
        except Exception as exc:
            self.libvirt_ready = False
            self.restart_failed = True
            log.error("restarting libvirtd failed (retried with the next heartbeat): %s", exc)
        self._set(restarts=self.status["restarts"] + 1)

    def _changed(self, path: Path) -> None:
        """pyinotify: someone edited or deleted one of our files; put ours back and restart libvirtd."""
        with self.lock:
            creds = self.creds
            if creds is None:
                self.session_end.set()
                return
            if credentials.installed(creds, self.creds_paths) and libvirtd.configured(
                self.libvirtd_paths, self.creds_paths.keytab, creds.allowed_users
            ):
                return  # our own atomic write, or a change that was already undone
            log.warning("%s was changed or deleted behind our back: re-installing", path)
            credentials.install(creds, self.creds_paths)
            reconfigured = libvirtd.configure(self.libvirtd_paths, self.creds_paths.keytab, creds.allowed_users)
            self._set(reinstalls=self.status["reinstalls"] + 1)
            if reconfigured:  # a keytab or krb5.conf put back is read at the next authentication
                self._restart()

    def _libvirt_ready(self) -> bool:
        if self.creds is None:
            return False
        self.libvirt_ready = libvirtd.listening(self.opts.libvirt_address, self.opts.libvirt_port, 0.5)
        return self.libvirt_ready

    def _uptime(self) -> int:
        try:
            return int(float((self.opts.root / "proc/uptime").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            return int(time.monotonic() - self.started)

    def shutdown(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        try:
            self.announcer.withdraw()
        except Exception:
            log.exception("withdrawing the zeroconf announcement failed")
        self._set(state=State.STOPPED)
        log.info("node agent stopped")


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return (host, int(port)) if host else (value, 53)


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="nodeagent", description="drover node agent")
    p.add_argument("--root", type=Path, default=Path("/"), help="read facts (sysfs, procfs) under this root")
    p.add_argument("--config-root", type=Path, default=Path("/"), help="write krb5.conf, keytab, libvirt config here")
    p.add_argument("--cmdline", type=Path, default=cmdline.PROC_CMDLINE)
    p.add_argument("--state-file", type=Path, default=Path("/run/drover/agent.json"))
    p.add_argument("--restart", choices=("systemd", "command", "none"), default="systemd")
    p.add_argument("--restart-command", default="", help="with --restart=command: the command that restarts libvirtd")
    p.add_argument("--libvirt-address", default="127.0.0.1")
    p.add_argument("--libvirt-port", type=int, default=16509)
    p.add_argument("--no-announce", action="store_true")
    p.add_argument("--mdns-interface", action="append", default=[], help="zeroconf interface address (repeatable)")
    p.add_argument("--mdns-type", default=discovery.MDNS_TYPE)
    p.add_argument("--mdns-timeout", type=float, default=3.0)
    p.add_argument("--dns-server", action="append", default=[], help="host[:port] for the SRV query (repeatable)")
    p.add_argument("--dns-domain", action="append", default=[])
    p.add_argument("--resolv-conf", type=Path, default=Path("/etc/resolv.conf"))
    p.add_argument("--error-backoff", type=float, default=1.0, help="first retry after an error, seconds")
    p.add_argument("--error-backoff-max", type=float, default=30.0)
    p.add_argument("--refused-pause", type=float, default=30.0)
    p.add_argument("--ready-deadline", type=float, default=45.0, help="tell systemd READY after this long at most")
    p.add_argument("--no-network", action="store_true", help="leave the node's links alone (no bridges/VLANs/bonds)")
    p.add_argument("--verbose", "-v", action="store_true")
    a = p.parse_args(argv)
    if a.restart == "command" and not a.restart_command:
        p.error("--restart=command needs --restart-command")
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",  # the journal adds time and unit
        stream=sys.stdout,
    )
    return Options(
        root=a.root,
        config_root=a.config_root,
        cmdline=a.cmdline,
        state_file=a.state_file,
        restart=a.restart,
        restart_command=a.restart_command,
        libvirt_address=a.libvirt_address,
        libvirt_port=a.libvirt_port,
        announce=not a.no_announce,
        mdns_interfaces=tuple(a.mdns_interface),
        discovery=discovery.DiscoverySettings(
            dns_servers=tuple(_host_port(s) for s in a.dns_server),
            dns_domains=tuple(a.dns_domain),
            resolv_conf=a.resolv_conf,
            mdns_type=a.mdns_type,
            mdns_interfaces=tuple(a.mdns_interface),
            mdns_timeout=a.mdns_timeout,
        ),
        schedule=heartbeat.Schedule(error_base=a.error_backoff, error_max=a.error_backoff_max),
        refused_pause=a.refused_pause,
        ready_deadline=a.ready_deadline,
        manage_network=not a.no_network,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        Agent(opts, stop).run()
    except (cmdline.CmdlineError, facts.FactsError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0
