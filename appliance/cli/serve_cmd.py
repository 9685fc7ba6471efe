"""`drover serve`: run the REST API (uvicorn) after making sure its realm, KDC and database are ready."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Generator
from types import FrameType
from typing import Any

import uvicorn

from appliance.api import create_app
from appliance.bootstrap import grant_first_admin
from appliance.cli.context import load_config
from appliance.config import Config, KerberosMode
from appliance.db import migrate
from appliance.errors import UsageError
from appliance.kerberos.realm import FIRST_ADMIN, Realm

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the REST API (Kerberos Negotiate) on [api] listen:port")
    p.set_defaults(func=serve)


class _Server(uvicorn.Server):
    """uvicorn without its habit of re-raising the stop signal after a graceful shutdown.

    uvicorn re-delivers SIGTERM/SIGINT once it has drained, which would kill us with a signal (or a
    KeyboardInterrupt) instead of letting `drover serve` return 0 after a clean stop.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        def stop(sig: int, frame: FrameType | None) -> None:
            log.info("got %s, stopping", signal.Signals(sig).name)
            self.force_exit = self.should_exit  # a second signal skips the drain
            self.should_exit = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _log_level(cfg: Config) -> None:
    """A daemon logs at [log_level] at least, whatever -v the CLI was given."""
    level = logging.getLevelName(cfg.log_level.upper())
    if isinstance(level, int):
        root = logging.getLogger()
        root.setLevel(min(root.level, level))


def prepare_realm(cfg: Config) -> Realm:
    """Embedded realm: create it if missing and start its KDC if nothing answers on the KDC port."""
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
    # The acceptor reads krb5.conf (and the replay cache dir) from the environment of this process.
    os.environ.update(realm.env())
    rcache = cfg.state_dir / "rcache"
    rcache.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ.setdefault("KRB5RCACHEDIR", str(rcache))
    return realm


def bind(host: str, port: int) -> socket.socket:
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
            f"cannot listen on {host}:{port}: {exc.strerror}",
            "stop whatever holds the port or set [api] port (DROVER_API_PORT)",
        ) from None
    sock.listen(128)
    return sock


def serve(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    _log_level(cfg)
    realm = prepare_realm(cfg)
    revs = migrate.upgrade(cfg.database_url)
    log.info("database %s at schema %s", revs.url, revs.after)
    app = create_app(cfg)
    sock = bind(cfg.api.listen, cfg.api.port)
    server = _Server(uvicorn.Config(app, log_config=None, lifespan="on", server_header=False))
    log.info(
        "drover API listening on http://%s:%s (clients: %s, service %s)",
        cfg.api.listen,
        cfg.api.port,
        cfg.api_url,
        realm.http_principal,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    log.info("drover API stopped")
    return 0
