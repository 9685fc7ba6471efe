"""`drover db` and `drover user` as a user runs them: the installed script in a child process, real databases."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.db import migrate
from tests.lab.postgres import free_port

DROVER = Path(sys.executable).parent / "drover"


def drover(*args: str, state_dir: Path, url: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(state_dir.parent),
        "DROVER_STATE_DIR": str(state_dir),
    }
    if url:
        env["DROVER_DATABASE_URL"] = url
    return subprocess.run(
        [str(DROVER), *args], env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=60
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.lab)])
def url(request: pytest.FixtureRequest) -> str:
    """Empty for SQLite (the default under the state dir), or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    postgres_url: str = request.getfixturevalue("postgres_url")
    return postgres_url


def test_db_upgrade_twice(tmp_path: Path, url: str) -> None:
    state = tmp_path / "state"
    before = drover("db", "current", state_dir=state, url=url)
    assert before.returncode == 0, before.stderr
    assert "empty" in before.stdout
    assert not state.exists()  # looking does not create anything
    first = drover("db", "upgrade", state_dir=state, url=url)
    assert first.returncode == 0, first.stderr
    newest = migrate.head()
    assert f"upgraded from empty to {newest}" in first.stdout
    second = drover("db", "upgrade", state_dir=state, url=url)
    assert second.returncode == 0, second.stderr
    assert f"already at {newest}" in second.stdout
    assert f"{newest} (newest)" in drover("db", "current", state_dir=state, url=url).stdout
    if not url:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert (state / "drover.db").is_file()


def test_user_verbs(tmp_path: Path, url: str) -> None:
    state = tmp_path / "state"
    assert drover("db", "upgrade", state_dir=state, url=url).returncode == 0
    added = drover("user", "add", "alice", "--role", "admin", state_dir=state, url=url)
    assert added.returncode == 0, added.stderr
    assert "alice@DROVER.TEST" in added.stdout
    assert drover("user", "add", "alice@DROVER.TEST", "--role", "monitor", state_dir=state, url=url).returncode == 0
    again = drover("user", "add", "alice", "--role", "admin", state_dir=state, url=url)
    assert again.returncode == 5
    assert "already has the global role admin" in again.stderr

    listed = drover("user", "list", state_dir=state, url=url)
    assert listed.returncode == 0, listed.stderr
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["PRINCIPAL", "ROLES"],
        ["alice@DROVER.TEST", "admin,monitor"],
    ]

    assert drover("user", "remove", "alice", state_dir=state, url=url).returncode == 0
    gone = drover("user", "remove", "alice", state_dir=state, url=url)
    assert gone.returncode == 4
    assert "no user alice@DROVER.TEST" in gone.stderr


def test_user_verbs_refuse_an_old_schema_and_a_bad_principal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    early = drover("user", "add", "alice", state_dir=state)
    assert early.returncode == 6
    assert "drover: hint: run `drover db upgrade`" in early.stderr
    bad = drover("user", "add", "not a principal", state_dir=state)
    assert bad.returncode == 2
    assert bad.stderr.startswith("drover: error: 'not a principal' is not a Kerberos principal")


@pytest.mark.parametrize(
    ("bad_url", "message"),
    [
        ("postgresql://drover@127.0.0.1:notaport/drover", "malformed database URL"),
        ("postgresql://drover:hunter2@127.0.0.1:{free}/drover", "cannot open database"),
    ],
    ids=["malformed", "nobody-listening"],  # the same ids in every xdist worker (the port is picked at run time)
)
def test_bad_database_url(tmp_path: Path, bad_url: str, message: str) -> None:
    bad_url = bad_url.replace("{free}", str(free_port()))
    state = tmp_path / "state"
    for argv in (["db", "upgrade"], ["user", "list"]):
        proc = drover(*argv, state_dir=state, url=bad_url)
        assert proc.returncode == 6
        assert proc.stdout == ""
        error, hint = proc.stderr.splitlines()
        assert error.startswith("drover: error: ") and message in error
        assert hint.startswith("drover: hint: ") and "DROVER_DATABASE_URL" in hint
        assert "hunter2" not in proc.stderr
    assert not state.exists()


def test_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    proc = drover("db", "upgrade", state_dir=tmp_path / "file" / "state")
    assert proc.returncode == 6
    error, hint = proc.stderr.splitlines()
    assert "cannot create directory" in error
    assert "DROVER_STATE_DIR" in hint


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_dir_is_0700_and_the_database_0600_from_the_first_run_and_after_an_upgrade(tmp_path: Path) -> None:
    """Issue 8: the state dir was 0755 and drover.db 0644 (hosts, users, roles, token hashes)."""
    old = os.umask(0o022)  # a usual umask: without care, files come out world-readable
    try:
        fresh = tmp_path / "fresh" / "state"
        done = drover("db", "upgrade", state_dir=fresh)
        assert done.returncode == 0, done.stderr
        assert _mode(fresh) == 0o700 and _mode(fresh / "drover.db") == 0o600
        assert all(_mode(p) == 0o600 for p in fresh.glob("drover.db*"))
        # As an older drover left them: wide open. The next run narrows them.
        older = tmp_path / "older"
        older.mkdir(mode=0o755)
        (older / "drover.db").touch(mode=0o644)
        (older / "drover.db-wal").touch(mode=0o644)
        older.chmod(0o755)
        done = drover("db", "upgrade", state_dir=older)
        assert done.returncode == 0, done.stderr
        assert _mode(older) == 0o700
        assert _mode(older / "drover.db") == 0o600
        assert all(_mode(p) == 0o600 for p in older.glob("drover.db*"))  # a WAL left behind too
    finally:
        os.umask(old)
