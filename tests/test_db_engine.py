"""appliance.db.engine: URL checks, SQLite set-up (dir 0700, foreign keys on), one-line connection errors."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from appliance.db.engine import connect, make_engine, parse_url, session_scope
from appliance.db.models import Event
from appliance.errors import DatabaseError
from tests.lab.postgres import free_port


@pytest.mark.parametrize("url", ["::::", "not a url", "postgresql://user@host:notaport/db"])
def test_malformed_url_names_the_setting(url: str) -> None:
    with pytest.raises(DatabaseError) as err:
        parse_url(url)
    assert "malformed database URL" in err.value.message
    assert "DROVER_DATABASE_URL" in err.value.hint


@pytest.mark.parametrize("url", ["mysql://u@h/db", "oracle://u@h/db", "foo://x"])
def test_unsupported_engine_refused(url: str) -> None:
    with pytest.raises(DatabaseError, match="unsupported database") as err:
        parse_url(url)
    assert "[database] url" in err.value.hint


def test_unsupported_postgresql_driver_refused() -> None:
    with pytest.raises(DatabaseError, match="unsupported PostgreSQL driver 'asyncpg'"):
        parse_url("postgresql+asyncpg://u@h/db")


def test_unknown_sqlite_driver_refused(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no driver for 'sqlite\\+nosuch'"):
        make_engine(f"sqlite+nosuch:///{tmp_path}/x.db")


def test_plain_postgresql_url_uses_psycopg() -> None:
    assert parse_url("postgresql://u@h/db").drivername == "postgresql+psycopg"


def test_sqlite_dir_created_private(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/state/sub/drover.db")
    engine.dispose()
    mode = (tmp_path / "state/sub").stat().st_mode
    assert stat.S_IMODE(mode) == 0o700


def test_sqlite_dir_that_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatabaseError, match="cannot create directory") as err:
        make_engine(f"sqlite:///{blocker}/drover.db")
    assert "DROVER_STATE_DIR" in err.value.hint


def test_unreachable_postgresql_is_one_line() -> None:
    engine = make_engine(f"postgresql://drover:secret@127.0.0.1:{free_port()}/drover")
    with pytest.raises(DatabaseError) as err, connect(engine):
        pass
    assert "cannot open database postgresql+psycopg://drover:***@127.0.0.1" in err.value.message
    assert "secret" not in str(err.value)
    assert "\n" not in str(err.value)
    assert "DROVER_DATABASE_URL" in err.value.hint


def test_foreign_keys_enforced(db_engine: Engine) -> None:
    with connect(db_engine) as conn:
        if db_engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        with pytest.raises(IntegrityError, match=r"(?i)foreign key"):
            conn.execute(text("INSERT INTO ip_ranges (network_id, first, last, prefix) VALUES (9, 'a', 'b', 24)"))


def test_timestamps_come_back_aware_utc(db_engine: Engine) -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    with session_scope(db_engine) as session:
        session.add(Event(at=at, kind="test"))
    with session_scope(db_engine) as session:
        event = session.query(Event).one()
        assert event.at == at
        assert event.at.tzinfo is UTC
        assert event.at.hour == 10


def test_naive_timestamp_refused(db_engine: Engine) -> None:
    with pytest.raises(Exception, match="naive datetime"), session_scope(db_engine) as session:
        session.add(Event(at=datetime(2024, 5, 1, 12, 0), kind="test"))  # naive on purpose
