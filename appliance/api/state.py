"""What the API's handlers share, built once by create_app(): configuration and the role lookup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from appliance.config import Config


@dataclass(frozen=True)
class ApiState:
    cfg: Config
    # principal -> role names; the database answers it (appliance.db.access.roles_of).
    roles_of: Callable[[str], list[str]]


def state(conn: HTTPConnection) -> ApiState:
    value = conn.app.state.drover
    if not isinstance(value, ApiState):
        raise TypeError("the app was not built by appliance.api.create_app")
    return value
