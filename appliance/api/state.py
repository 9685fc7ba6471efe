"""What the API's handlers share, built once by create_app(): configuration, database, host browser."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from appliance.config import Config
from appliance.db.engine import make_engine, session_scope


class Browser(Protocol):
    """The host browser when it runs in this process (appliance.launcher.RunningBrowser)."""

    def wake(self) -> None:
        """Read the database now, e.g. to drop the session of a host just removed."""

    def nudge(self, host_id: int) -> None:
        """The host is alive (it heartbeats): reconnect now if its libvirt session is down."""


class MonitorStats(Protocol):
    """The monitor when it runs in this process (monitor.service.Monitor): its counters for /metrics."""

    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ApiState:
    cfg: Config
    engine: Engine
    # None when no host browser runs in this process (disabled, or a test's bare app): it then sees
    # changes at its next scan, [hostbrowser] scan_seconds later.
    browser: Browser | None = None
    monitor: MonitorStats | None = None  # None: /metrics shows DB counts only


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


Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def database(cfg: Config, engine: Engine | None) -> tuple[Engine, Lifespan]:
    """The engine an app uses, and a lifespan that disposes of it only if the app made it itself.

    A caller that passes its own engine (drover serve sharing one pool across listeners, a test)
    keeps ownership of it.
    """
    db = make_engine(cfg.database_url) if engine is None else engine
    owned = engine is None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if owned:
            db.dispose()

    return db, lifespan
