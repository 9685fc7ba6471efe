"""Alembic environment: runs on the connection appliance.db.migrate hands over, never on an alembic.ini URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from appliance.db.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if context.is_offline_mode() or not isinstance(connection, Connection):
    raise RuntimeError("drover migrations run through appliance.db.migrate with a live connection")
_run(connection)
