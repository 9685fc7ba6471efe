"""Engines and sessions from a database URL, with every way the URL can be wrong turned into a DatabaseError."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from appliance import statedir
from appliance.errors import DatabaseError

log = logging.getLogger(__name__)

SETTING = "DROVER_DATABASE_URL or [database] url"
EXAMPLE = "postgresql+psycopg://drover@dbhost/drover, or empty for SQLite under the state dir"
SUPPORTED = ("sqlite", "postgresql")
CONNECT_TIMEOUT = 5  # seconds; an unreachable server should fail a CLI command quickly, not hang it


def parse_url(url: str) -> URL:
    """A validated SQLAlchemy URL for one of the engines drover supports."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise DatabaseError(f"malformed database URL {url!r}", f"set {SETTING} to e.g. {EXAMPLE}") from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise DatabaseError(
            f"unsupported database {backend!r} in URL {parsed.render_as_string()!r}",
            f"drover runs on sqlite or postgresql; set {SETTING} to e.g. {EXAMPLE}",
        )
    if backend == "postgresql" and parsed.get_driver_name() != "psycopg":
        # psycopg (3) is the one PostgreSQL driver drover installs; plain postgresql:// would pick psycopg2.
        if "+" in parsed.drivername:
            raise DatabaseError(
                f"unsupported PostgreSQL driver {parsed.get_driver_name()!r}",
                f"use postgresql+psycopg:// (or plain postgresql://) in {SETTING}",
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def sqlite_path(url: URL) -> Path | None:
    """The database file of a file-backed SQLite URL; None for PostgreSQL and in-memory SQLite."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _ensure_sqlite_dir(path: Path) -> None:
    """The database's directory 0700 and its files 0600: it holds token hashes and permissions."""
    directory = path.parent
    hint = f"set DROVER_STATE_DIR to a writable directory, or point {SETTING} elsewhere"
    if not directory.is_dir():  # an existing one may be shared (/tmp): the state dir is narrowed by its users
        try:
            directory.mkdir(mode=statedir.DIR_MODE, parents=True)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create directory {directory} for the SQLite database: {exc.strerror}", hint
            ) from None
        log.info("created %s for the SQLite database", directory)
    try:
        statedir.secure_sqlite(path)
    except OSError as exc:
        raise DatabaseError(f"cannot prepare {path} for the SQLite database: {exc.strerror}", hint) from None


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # SQLite ignores foreign keys unless asked, per connection.
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL lets the API read while the task engine writes, from separate processes.
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def make_engine(url: str | URL, *, create_dir: bool = True) -> Engine:
    """An Engine for `url`; for file-backed SQLite, its directory is created (0700) unless create_dir is False."""
    parsed = parse_url(url) if isinstance(url, str) else url
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        if path is not None and create_dir:
            _ensure_sqlite_dir(path)
        # Wait for a concurrent writer instead of failing at once with "database is locked".
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        # As many connections as request threads (anyio's 40): with SQLAlchemy's 15, sixteen identifies
        # holding theirs through kadmin left every heartbeat queueing for a connection (p50 1.2 s under load).
        # All of them stay open once made: with five kept and 35 overflow, half of 100 heartbeats a second
        # opened a new connection (a PostgreSQL backend started and authenticated each time), and PostgreSQL
        # spent 4.6 ms of CPU per heartbeat instead of 0.5.
        kwargs["pool_size"], kwargs["max_overflow"] = 40, 0
    try:
        engine = create_engine(parsed, **kwargs)
    except (sqlalchemy.exc.NoSuchModuleError, ModuleNotFoundError) as exc:
        raise DatabaseError(f"no driver for {parsed.drivername!r}: {exc}", f"check {SETTING}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    else:
        event.listen(engine.pool, "checkin", _note_checkin)
        event.listen(engine.pool, "checkout", _ping_if_idle)
    return engine


PING_IDLE_SECONDS = 1.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """SQLAlchemy's pre-ping, but only for a connection that sat idle for a second or more: under load a
    pooled connection is reused within milliseconds and the ping was an extra round trip per transaction
    (15 % of a task's statements). A server restarted meanwhile is still noticed: the idle connections are
    pinged, and a statement that fails on a dead one invalidates the whole pool."""
    if time.monotonic() - record.info.get("checked_in", 0.0) < PING_IDLE_SECONDS:
        return
    try:
        dbapi_connection.execute("SELECT 1")
    except Exception as exc:  # the pool replaces the connection and tries again
        raise sqlalchemy.exc.DisconnectionError(str(exc)) from exc


def describe(engine: Engine) -> str:
    """The engine's URL with any password masked, for messages."""
    return engine.url.render_as_string(hide_password=True)


def first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def unreachable(engine: Engine, exc: BaseException) -> DatabaseError:
    """The error for a database that cannot be opened, naming the URL (no password) and the setting."""
    if engine.url.get_backend_name() == "sqlite":
        hint = f"check that the file is readable and writable, or point {SETTING} elsewhere"
    else:
        hint = f"is PostgreSQL running and reachable with these credentials? check {SETTING}"
    return DatabaseError(f"cannot open database {describe(engine)}: {first_line(exc)}", hint)


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection, with a failure to connect reported as one DatabaseError line."""
    try:
        conn = engine.connect()
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise unreachable(engine, exc) from None
    with conn:
        yield conn


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: handlers return the objects they just committed without another round trip.
    # One per engine, kept on it: each sessionmaker makes a new Session subclass whose event dispatch is
    # built again on its first transaction (a tenth of a task's time in the interpreter when made per call).
    factory: sessionmaker[Session] | None = engine.__dict__.get("_drover_sessions")
    if factory is None:
        factory = engine.__dict__["_drover_sessions"] = sessionmaker(engine, expire_on_commit=False)
    return factory


def _failed(engine: Engine, exc: sqlalchemy.exc.OperationalError) -> DatabaseError:
    # Lost connections, lock time-outs, a schema older than the code: all need the admin, not a retry here.
    return DatabaseError(
        f"database {describe(engine)}: {first_line(exc)}",
        f"check {SETTING}; run `drover db upgrade` if the schema is behind",
    )


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    try:
        with session_factory(engine).begin() as session:
            yield session
    except sqlalchemy.exc.OperationalError as exc:
        raise _failed(engine, exc) from None


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """session_scope without the ORM: one transaction on a connection, for Core statements on hot paths."""
    try:
        with engine.begin() as conn:
            yield conn
    except sqlalchemy.exc.OperationalError as exc:
        raise _failed(engine, exc) from None
