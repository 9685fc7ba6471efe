"""`drover taskengine run [--workers N]`: the task engine on its own, e.g. on another machine sharing PostgreSQL."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from appliance.cli.context import load_config
from appliance.cli.serve_cmd import _log_level
from appliance.config import KerberosMode
from appliance.db import migrate
from appliance.db.engine import make_engine
from appliance.errors import UsageError
from appliance.kerberos.realm import Realm
from appliance.launcher import start_taskengine

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("taskengine", help="run the task engine's workers on their own (SIGTERM stops them)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    run = verbs.add_parser("run", help="claim and run tasks until stopped")
    run.add_argument("--workers", type=int, metavar="N", help="worker threads (default: [taskengine] workers)")
    run.set_defaults(func=run_engine)


def run_engine(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    _log_level(cfg)
    if args.workers is not None and not 1 <= args.workers <= 256:
        raise UsageError("--workers: must be from 1 to 256")
    realm = Realm.from_config(cfg)
    if realm.mode is KerberosMode.EMBEDDED and not realm.files.appliance_keytab.is_file():
        raise UsageError(
            f"no appliance keytab in {realm.files.root}", "run `drover realm init` or `drover serve` first"
        )
    os.environ.update(realm.env())
    engine = make_engine(cfg.database_url)
    try:
        migrate.require_current(engine)
    finally:
        engine.dispose()
    running = start_taskengine(cfg, realm, args.workers)
    if running is None:
        return 1
    stop = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"task engine {running.worker.name} running with {running.worker.threads} workers", flush=True)
    stop.wait()
    running.stop()
    log.info("task engine stopped after %d tasks", running.worker.ran)
    return 0
