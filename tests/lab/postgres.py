"""Lab fixture: a real PostgreSQL cluster in a temp dir for the test session, one fresh database per test.

Also `db_url`/`db_engine`, which run a database test once on SQLite and once on that PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from appliance.db import migrate
from appliance.db.engine import make_engine
from appliance.db.models import Base
from appliance.errors import ToolMissing
from appliance.runner import run, spawn, which

log = logging.getLogger(__name__)

PG_USER = "postgres"  # initdb and postgres refuse root; Debian's package creates this user
READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class PostgresServer:
    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        # Over the unix socket: proves both listeners work and keeps admin traffic off the tested TCP path.
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=PG_USER, dbname="postgres", autocommit=True
        )

    def create_database(self, name: str, template: str = "template0") -> str:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv]


def _wait_ready(server: PostgresServer, proc: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{log_file.read_text()[-3000:]}")
        try:
            with psycopg.connect(server.url().replace("+psycopg", ""), connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"postgres not ready after {READY_TIMEOUT}s ({last}):\n{log_file.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        which("initdb"), which("postgres"), which("pg_ctl"), which("runuser")
    except ToolMissing as exc:
        pytest.skip(str(exc))
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        pytest.skip(f"no {PG_USER!r} user to run PostgreSQL as (apt-get install postgresql)")
    with running_postgres() as server:
        yield server


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster on a free loopback port (the fixture above; the bench uses it too)."""
    initdb, postgres, pg_ctl = which("initdb"), which("postgres"), which("pg_ctl")
    pg = pwd.getpwnam(PG_USER)
    # Not under pytest's tmp_path: that is root-only (0700) and the postgres user could not enter it.
    root = Path(tempfile.mkdtemp(prefix="drover-pg-"))
    os.chown(root, pg.pw_uid, pg.pw_gid)
    server = PostgresServer(root, free_port())
    log_file = root / "postgres.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        run(
            _as_postgres([
                initdb,
                "-D", str(server.data_dir),
                "-U", PG_USER,
                "-A", "trust",
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]),
            cwd=root,
        )
        # Durability settings off: a test cluster is thrown away, and fsync dominates CREATE DATABASE time.
        proc = spawn(
            _as_postgres([
                postgres,
                "-D", str(server.data_dir),
                "-k", str(server.socket_dir),
                "-h", "127.0.0.1",
                "-p", str(server.port),
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ]),
            cwd=root,
            log_file=log_file,
        )
        _wait_ready(server, proc, log_file)
        log.info("postgres ready on 127.0.0.1:%s, data in %s", server.port, server.data_dir)
        yield server
    finally:
        if proc is not None:
            run(_as_postgres([pg_ctl, "stop", "-D", str(server.data_dir), "-m", "fast", "-w"]), cwd=root, check=False)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A URL to an empty database of its own, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def postgres_migrated_url(postgres_server: PostgresServer) -> str:
    """One database at the newest schema for the whole session; `db_engine` empties it before each test."""
    url = postgres_server.create_database("drover_shared")
    migrate.upgrade(url)
    return url


def _truncate_all(engine: Engine) -> None:
    # Far cheaper than a CREATE DATABASE per test (which checkpoints), and leaves the schema under test alone.
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


@pytest.fixture(scope="session")
def sqlite_migrated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the newest schema, copied for each test instead of migrating every time."""
    path = tmp_path_factory.mktemp("sqlite-template") / "drover.db"
    migrate.upgrade(f"sqlite:///{path}")  # disposes its engine: the WAL is folded back into the file
    return path


_ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.lab)]


@pytest.fixture(params=_ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL, once on SQLite (a file in tmp_path) and once on the lab's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'drover.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=_ENGINES)
def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An Engine on a database at the newest schema, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "state" / "drover.db"
        path.parent.mkdir(mode=0o700)
        shutil.copyfile(request.getfixturevalue("sqlite_migrated_file"), path)
        engine = make_engine(f"sqlite:///{path}")
    else:
        engine = make_engine(request.getfixturevalue("postgres_migrated_url"))
        _truncate_all(engine)
    yield engine
    engine.dispose()
