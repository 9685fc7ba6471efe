"""appliance.db.tokens: a token works once, for its host, before it expires; only its hash is ever stored."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from appliance.db.base import utcnow
from appliance.db.engine import session_scope
from appliance.db.models import EnrolmentToken
from appliance.db.tokens import PREFIX, Refusal, TokenRefused, consume, mint
from appliance.errors import UsageError

DMI = "4C4C4544-0042-3510-8052-B4C04F4E4E31"


def _refused(engine: Engine, token: str, reason: Refusal, host_uuid: str | None = None, mac: str | None = None) -> None:
    with pytest.raises(TokenRefused) as err, session_scope(engine) as session:
        consume(session, token, host_uuid=host_uuid, mac=mac)
    assert err.value.reason is reason
    # The client sees the same words whatever the reason, so a refusal tells an attacker nothing.
    assert err.value.message == "enrolment token refused"


def test_mint_stores_only_a_hash(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        minted = mint(session, created_by="admin@DROVER.TEST")
    prefix, selector, secret = minted.token.split(".")
    assert prefix == PREFIX
    assert len(secret) >= 40
    with session_scope(db_engine) as session:
        dump = " ".join(str(v) for row in session.execute(text("SELECT * FROM enrolment_tokens")) for v in row)
    assert secret not in dump
    assert selector in dump


def test_consume_once(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        minted = mint(session)
    with session_scope(db_engine) as session:
        row = consume(session, minted.token, host_uuid=DMI)
        assert row.used_at is not None
    _refused(db_engine, minted.token, Refusal.USED)


def test_expired_refused(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        minted = mint(session, ttl=timedelta(minutes=5), now=utcnow() - timedelta(minutes=6))
    _refused(db_engine, minted.token, Refusal.EXPIRED)


def test_wrong_secret_refused(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        minted = mint(session)
    prefix, selector, secret = minted.token.split(".")
    _refused(db_engine, f"{prefix}.{selector}.{secret[::-1]}", Refusal.WRONG_SECRET)
    _refused(db_engine, f"{prefix}.0000000000000000.{secret}", Refusal.UNKNOWN)
    _refused(db_engine, "garbage", Refusal.MALFORMED)
    # A refused attempt does not use the token up.
    with session_scope(db_engine) as session:
        consume(session, minted.token)


def test_bound_token_only_for_its_host(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        minted = mint(session, host_uuid=DMI, mac="52-54-00-AB-CD-EF")
    _refused(db_engine, minted.token, Refusal.WRONG_HOST, host_uuid="00000000-0000-0000-0000-000000000000")
    _refused(db_engine, minted.token, Refusal.WRONG_HOST, host_uuid=DMI, mac="52:54:00:00:00:00")
    with session_scope(db_engine) as session:
        row = consume(session, minted.token, host_uuid=DMI.lower(), mac="52:54:00:ab:cd:ef")
        assert row.host_uuid == DMI.lower()


def test_two_tokens_are_independent(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        first, second = mint(session), mint(session)
    assert first.token != second.token
    with session_scope(db_engine) as session:
        consume(session, second.token)
    with session_scope(db_engine) as session:
        consume(session, first.token)
        assert session.query(EnrolmentToken).filter(EnrolmentToken.used_at.is_(None)).count() == 0


def test_lifetime_must_be_positive(db_engine: Engine) -> None:
    with pytest.raises(UsageError), session_scope(db_engine) as session:
        mint(session, ttl=timedelta(0))
