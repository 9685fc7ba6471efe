"""`drover serve`: run the REST API (uvicorn) after making sure its realm, KDC and database are ready."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from appliance import statedir, tls
from appliance.api import create_app
from appliance.api.boot import create_boot_app
from appliance.api.nodes import create_node_app
from appliance.bootstrap import grant_first_admin
from appliance.cli.context import load_config
from appliance.config import Config, KerberosMode
from appliance.db import migrate
from appliance.errors import KerberosError
from appliance.kerberos import health
from appliance.kerberos.realm import FIRST_ADMIN, Realm
from appliance.launcher import start_fencer, start_hostbrowser, start_monitor, start_taskengine
from appliance.pki import ensure as ensure_pki
from appliance.serving import Group, bind, listener
from appliance.web import stream

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="run the REST API, the node service (identify, heartbeat, boot), host browser and task engine"
    )
    p.set_defaults(func=serve)


def _log_level(cfg: Config) -> None:
    """A daemon logs at [log_level] at least, whatever -v the CLI was given."""
    level = logging.getLevelName(cfg.log_level.upper())
    if isinstance(level, int):
        root = logging.getLogger()
        root.setLevel(min(root.level, level))
    # httpx logs each request at INFO: the monitor's TSDB writer alone would add a line a second.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, level if isinstance(level, int) else 0))


def prepare_realm(cfg: Config) -> Realm:
    """Embedded realm: create it if missing and start its KDC if nothing answers on the KDC port.
    An existing realm: check it (reachability, keytabs, admin rights) and refuse to serve if it is not usable."""
    realm = Realm.from_config(cfg)
    if realm.mode is KerberosMode.EMBEDDED:
        if not realm.files.database.is_file():
            realm.create()
            log.info("created the embedded realm %s in %s", realm.name, realm.files.root)
            # As `drover realm init` does: the realm's first admin can run the appliance.
            grant_first_admin(cfg, f"{FIRST_ADMIN}@{realm.name}")
        elif not realm.files.http_keytab.is_file():
            realm.issue_appliance_keytabs(fresh=False)
        if not realm.kdc_answers():
            realm.start()
        else:
            # Ours (pid file) or a KDC someone else supervises for this realm (the test lab): use it.
            log.info("KDC for %s answering on %s", realm.name, realm.spec.kdc)
    else:
        require_usable(realm)
    # The acceptor reads krb5.conf (and the replay cache dir) from the environment of this process.
    os.environ.update(realm.env())
    rcache = cfg.state_dir / "rcache"
    rcache.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ.setdefault("KRB5RCACHEDIR", str(rcache))
    return realm


def require_usable(realm: Realm) -> None:
    """An existing realm is checked as `drover realm status` checks it; any failure stops the start."""
    failed = health.failures(health.check(realm))
    if failed:
        raise KerberosError(
            f"the realm {realm.name} is not ready for drover: " + "; ".join(f"{c.name}: {c.detail}" for c in failed),
            f"{failed[0].fix}; `drover realm status` shows every check",
        )
    log.info("realm %s checked: KDC, kadmind, keytabs and %s's rights are in order", realm.name, realm.admin_principal)


def serve(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    _log_level(cfg)
    statedir.secure_dir(cfg.state_dir)
    realm = prepare_realm(cfg)
    revs = migrate.upgrade(cfg.database_url)
    log.info("database %s at schema %s", revs.url, revs.after)
    pki = ensure_pki(cfg)
    served_cert = tls.server_cert(cfg, pki)  # a bad provided certificate or key stops the start here
    # Every port is bound before any server starts: a taken one fails the whole command at once.
    sockets = [bind(cfg.api.listen, cfg.api.port, "[api] port (DROVER_API_PORT)")]
    try:
        sockets.append(bind(cfg.nodes.listen, cfg.nodes.port, "[nodes] port (DROVER_NODES_PORT)"))
        sockets.append(bind(cfg.nodes.listen, cfg.nodes.boot_port, "[nodes] boot_port (DROVER_NODES_BOOT_PORT)"))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    try:
        monitor = start_monitor(cfg) if cfg.monitor.enabled else None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    # Before the apps: the API wakes it (a removed host's session is dropped at once), heartbeats nudge it.
    browser = start_hostbrowser(cfg, realm) if cfg.hostbrowser.enabled else None
    engine = start_taskengine(cfg, realm) if cfg.taskengine.enabled else None
    fencer = start_fencer(cfg) if cfg.fencing.enabled else None
    try:
        group = Group(
            [
                listener("api", create_app(cfg, browser=browser, monitor=monitor), sockets[0],
                         certfile=str(served_cert.cert) if served_cert else "",
                         keyfile=str(served_cert.key) if served_cert else ""),
                listener("nodes", create_node_app(cfg, realm=realm, browser=browser), sockets[1],
                         certfile=str(pki.server_cert), keyfile=str(pki.server_key)),
                listener("boot", create_boot_app(cfg, pki, sockets[1].getsockname()[1]), sockets[2]),
            ],
            on_stop=[stream.STOPPING.set],
        )  # fmt: skip
        log.info(
            "drover API and web UI listening on %s (clients: %s, service %s); %s",
            group.listeners[0].url,
            cfg.api_url,
            realm.http_principal,
            tls.describe(cfg),
        )
        log.info(
            "node service on %s, boot service on %s (iPXE: chain %s/boot/boot.ipxe, image %s); drover.ca=%s",
            group.listeners[1].url,
            group.listeners[2].url,
            group.listeners[2].url,
            cfg.boot_image_dir,
            pki.fingerprint(),
        )
        group.run()
    finally:
        if fencer is not None:
            fencer.stop()
            fencer.engine.dispose()
        if engine is not None:
            engine.stop()
        if browser is not None:
            browser.stop()
        if monitor is not None:
            monitor.stop()
            monitor.engine.dispose()
    log.info("drover API stopped")
    return 0
