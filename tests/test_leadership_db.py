"""The fencer's lease on SQLite and PostgreSQL: one holder at a time, taken over only once it has run out, and a
holder that lost it refused before it acts (appliance.leadership). Clocks are given, so expiry is exact."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import Event, Lease
from appliance.leadership import Leadership, Lost, current


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_one_holder_until_its_lease_runs_out(db_engine: Engine) -> None:
    clock = Clock()
    a = Leadership(db_engine, 10, holder="a:1:x", clock=clock)
    b = Leadership(db_engine, 10, holder="b:2:y", clock=clock)
    assert a.hold() and a.term == 1 and a.held(3)
    assert not b.hold() and not b.held()
    clock.advance(6)
    assert a.hold() and not b.hold()  # renewed: 10 s from now, not from the first take
    clock.advance(9)
    assert not b.hold()
    with session_scope(db_engine) as s:
        assert a.check(s) == 1
        with pytest.raises(Lost, match="runs out in"):
            a.check(s, spare=2)  # 1 s left: too close to act
    clock.advance(1.5)  # a stopped renewing (SIGKILL): it ran out
    assert not a.held()
    assert b.hold() and b.term == 2
    with session_scope(db_engine) as s, pytest.raises(Lost, match="held by b:2:y"):
        a.check(s)  # the old holder, back from a freeze, acts on nothing
    assert a.term is None and not a.hold()
    with session_scope(db_engine) as s:
        leader = current(s)
        assert leader is not None and leader.holder == "b:2:y" and leader.term == 2
        messages = list(s.scalars(select(Event.message).where(Event.kind == "fencer.leader").order_by(Event.id)))
    assert messages[0] == "a:1:x leads the fencer (term 1)"
    assert messages[1].startswith("b:2:y leads the fencer (term 2), taking over from a:1:x, whose lease ran out")


def test_a_clean_stop_hands_over_at_once(db_engine: Engine) -> None:
    clock = Clock()
    a = Leadership(db_engine, 30, holder="a:1:x", clock=clock)
    b = Leadership(db_engine, 30, holder="b:2:y", clock=clock)
    assert a.hold() and not b.hold()
    a.release()
    assert not a.held() and b.hold() and b.term == 2
    with session_scope(db_engine) as s:
        assert s.scalars(select(Lease.holder)).one() == "b:2:y"
    with session_scope(db_engine) as s, pytest.raises(Lost, match="does not hold"):
        a.check(s)
