"""Schema migrations from Python: `upgrade(url)` to the newest revision, `current(url)` to see where a database is."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from appliance.db.engine import connect, describe, make_engine, parse_url, sqlite_path
from appliance.errors import DatabaseError

log = logging.getLogger(__name__)

# Any constant will do: it only has to be the same for every drover process sharing one PostgreSQL.
_PG_LOCK_KEY = 0x64726F766572  # "drover"


@dataclass(frozen=True)
class Revisions:
    url: str  # password masked
    before: str | None  # None: an empty database
    after: str | None
    head: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """Alembic's config built in code: the scripts ship inside the package, there is no alembic.ini."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(str(files("appliance.db") / "migrations"))))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:
        raise DatabaseError("no migrations found in the drover package", "reinstall drover")
    return revision


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def current(url: str) -> Revisions:
    """Where the database at `url` is; a SQLite file that does not exist yet is reported empty, not created."""
    parsed = parse_url(url)
    path = sqlite_path(parsed)
    masked = parsed.render_as_string(hide_password=True)
    if path is not None and not path.exists():
        return Revisions(masked, None, None, head())
    engine = make_engine(parsed, create_dir=False)
    try:
        with connect(engine) as conn:
            rev = _revision(conn)
    finally:
        engine.dispose()
    return Revisions(masked, rev, rev, head())


def upgrade_engine(engine: Engine, revision: str = "head") -> Revisions:
    sqlite = engine.dialect.name == "sqlite"
    with connect(engine) as conn:
        if sqlite:
            # A batch migration rebuilds a table by DROP + rename; with foreign keys on, the DROP would fire
            # ON DELETE CASCADE into the child tables. SQLite only honours this PRAGMA outside a transaction.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        with conn.begin():
            if not sqlite:
                # Two appliance processes upgrading at once would both try to create the same tables.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
            before = _revision(conn)
            command.upgrade(alembic_config(conn), revision)
            after = _revision(conn)
        if sqlite:
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
            if broken:
                raise DatabaseError(f"migration left {len(broken)} rows with dangling foreign keys: {broken[:3]}")
    if before != after:
        log.info("database %s upgraded from %s to %s", describe(engine), before or "empty", after)
    return Revisions(describe(engine), before, after, head())


def upgrade(url: str, revision: str = "head") -> Revisions:
    """Bring the database at `url` to `revision` (the newest by default); a no-op when it is there already."""
    engine = make_engine(url)
    try:
        return upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def require_current(engine: Engine) -> None:
    """Raise DatabaseError unless the schema is at the newest revision this code knows."""
    with connect(engine) as conn:
        rev = _revision(conn)
    newest = head()
    if rev != newest:
        state = f"at revision {rev}" if rev else "empty"
        raise DatabaseError(
            f"database {describe(engine)} is {state}, this drover needs {newest}", "run `drover db upgrade`"
        )
