"""First-run set-up shared by `drover realm init` and `drover serve`: schema, and the first super_admin."""

from __future__ import annotations

import logging

from appliance.config import Config
from appliance.db import migrate
from appliance.db.access import grant
from appliance.db.engine import make_engine, session_scope
from appliance.db.models.users import Role
from appliance.errors import Conflict

log = logging.getLogger(__name__)


def grant_first_admin(cfg: Config, principal: str) -> bool:
    """Bring the DB to the newest schema and make sure `principal` holds global super_admin.

    Returns True if the role was granted now, False if it was already there (safe to repeat).
    """
    migrate.upgrade(cfg.database_url)
    engine = make_engine(cfg.database_url)
    try:
        with session_scope(engine) as session:
            grant(session, principal, Role.SUPER_ADMIN)
    except Conflict:
        return False
    finally:
        engine.dispose()
    log.info("granted %s the global role %s", principal, Role.SUPER_ADMIN)
    return True
