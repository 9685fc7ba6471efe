"""`drover db upgrade|current`: bring the appliance database to the newest schema, or show where it is."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine

from appliance import statedir
from appliance.cli.context import load_config
from appliance.db import migrate
from appliance.db.engine import make_engine


def register(sub: Any) -> None:
    p = sub.add_parser("db", help="the appliance database: schema upgrades")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs.add_parser("upgrade", help="migrate the database to the newest schema (safe to repeat)").set_defaults(
        func=upgrade
    )
    verbs.add_parser("current", help="show the database's schema revision and the newest one").set_defaults(
        func=current
    )


@contextmanager
def open_database(args: argparse.Namespace) -> Iterator[Engine]:
    """The configured database, checked to be at the newest schema; for verbs that read or write rows."""
    engine = make_engine(load_config(args).database_url)
    try:
        migrate.require_current(engine)
        yield engine
    finally:
        engine.dispose()


def upgrade(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    statedir.narrow_dir(cfg.state_dir)
    revs = migrate.upgrade(cfg.database_url)
    if revs.changed:
        print(f"database {revs.url} upgraded from {revs.before or 'empty'} to {revs.after}")
    else:
        print(f"database {revs.url} already at {revs.after} (newest)")
    return 0


def current(args: argparse.Namespace) -> int:
    revs = migrate.current(load_config(args).database_url)
    if revs.after is None:
        print(f"database {revs.url}: empty (newest is {revs.head}; run `drover db upgrade`)")
    elif revs.after == revs.head:
        print(f"database {revs.url}: {revs.after} (newest)")
    else:
        print(f"database {revs.url}: {revs.after} (newest is {revs.head}; run `drover db upgrade`)")
    return 0
