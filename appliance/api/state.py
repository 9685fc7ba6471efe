"""What the API's handlers share, built once by create_app(): the configuration and the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from appliance.config import Config
from appliance.db.engine import session_scope


@dataclass(frozen=True)
class ApiState:
    cfg: Config
    engine: Engine


def state(conn: HTTPConnection) -> ApiState:
    value = conn.app.state.drover
    if not isinstance(value, ApiState):
        raise TypeError("the app was not built by appliance.api.create_app")
    return value


@contextmanager
def session(conn: HTTPConnection) -> Iterator[Session]:
    """One transaction for a request's handler: committed if it returns, rolled back if it raises."""
    with session_scope(state(conn).engine) as s:
        yield s
