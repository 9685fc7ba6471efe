"""appliance.db.access.roles_of: global roles only, strongest first, nothing for unknown or disabled users."""

from __future__ import annotations

from sqlalchemy import Engine

from appliance.db.access import roles_of
from appliance.db.engine import session_scope
from appliance.db.models import HardwarePool, Permission, Role, User


def test_roles_of(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        pool = HardwarePool(name="default")
        alice = User(principal="alice@DROVER.TEST")
        alice.permissions += [Permission(role=Role.MONITOR), Permission(role=Role.ADMIN)]
        bob = User(principal="bob@DROVER.TEST")
        bob.permissions.append(Permission(role=Role.ADMIN, pool=pool))  # scoped: not a global role
        carol = User(principal="carol@DROVER.TEST", is_disabled=True)
        carol.permissions.append(Permission(role=Role.SUPER_ADMIN))
        session.add_all([pool, alice, bob, carol])
    with session_scope(db_engine) as session:
        assert roles_of(session, "alice@DROVER.TEST") == [Role.ADMIN, Role.MONITOR]
        assert roles_of(session, "bob@DROVER.TEST") == []
        assert roles_of(session, "carol@DROVER.TEST") == []
        assert roles_of(session, "nobody@DROVER.TEST") == []
        assert roles_of(session, "ALICE@DROVER.TEST") == []  # principals are case-sensitive in Kerberos


def test_role_rank() -> None:
    assert Role.SUPER_ADMIN.includes(Role.ADMIN)
    assert Role.ADMIN.includes(Role.ADMIN)
    assert not Role.MONITOR.includes(Role.USER)
