"""appliance.db.migrate: upgrade from empty, repeat as a no-op, models and migrations never drift apart."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, Table, inspect

from appliance.db import migrate
from appliance.db.engine import connect, make_engine
from appliance.db.models import Base
from appliance.errors import DatabaseError


def _diff(engine: Engine, metadata: MetaData) -> list[object]:
    with connect(engine) as conn, warnings.catch_warnings():
        # SQLite cannot reflect an expression index (the claim's `priority DESC`, made on PostgreSQL only):
        # alembic skips it there and says so; the PostgreSQL run of this test compares it.
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, metadata))


def test_upgrade_from_empty_then_noop(db_url: str) -> None:
    assert migrate.current(db_url).after is None
    first = migrate.upgrade(db_url)
    assert (first.before, first.after, first.changed) == (None, migrate.head(), True)
    again = migrate.upgrade(db_url)
    assert (again.before, again.after, again.changed) == (migrate.head(), migrate.head(), False)
    assert migrate.current(db_url).after == migrate.head()


def test_migrations_match_models(db_engine: Engine) -> None:
    assert _diff(db_engine, Base.metadata) == []
    tables = set(inspect(db_engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_comparison_would_see_a_drift(db_engine: Engine) -> None:
    # The empty diff above only means something if the same comparison reports a difference when there is one.
    drifted = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    Table("not_migrated", drifted, Column("id", Integer, primary_key=True))
    assert [d[0] for d in _diff(db_engine, drifted) if isinstance(d, tuple)] == ["add_table"]


def test_downgrade_to_empty_and_back(db_url: str) -> None:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with connect(engine) as conn, conn.begin():
            command.downgrade(migrate.alembic_config(conn), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        assert migrate.upgrade_engine(engine).after == migrate.head()
    finally:
        engine.dispose()


def test_require_current_refuses_an_empty_database(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with pytest.raises(DatabaseError, match="is empty") as err:
            migrate.require_current(engine)
        assert "drover db upgrade" in err.value.hint
    finally:
        engine.dispose()


def test_current_does_not_create_a_sqlite_file(tmp_path: Path) -> None:
    revs = migrate.current(f"sqlite:///{tmp_path}/state/drover.db")
    assert revs.after is None
    assert not (tmp_path / "state").exists()
