"""Config: TOML + DROVER_* environment into a frozen dataclass; bad input is a one-line error."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance import config
from appliance.errors import ConfigError

DROVER = [sys.executable, "-m", "appliance.cli"]


def _cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DROVER, *argv], env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, check=False
    )


def test_defaults_without_file_or_env() -> None:
    cfg = config.load(env={})
    assert cfg.kerberos.mode is config.KerberosMode.EMBEDDED
    assert cfg.database_url == f"sqlite:///{cfg.state_dir / 'drover.db'}"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.log_level = "debug"  # type: ignore[misc]


def test_file_then_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "drover.toml"
    path.write_text('state_dir = "/srv/x"\n[database]\nurl = "postgresql+psycopg://d@db/drover"\n[api]\nport = 9000\n')
    cfg = config.load(path, env={"DROVER_API_PORT": "9100", "DROVER_KERBEROS_MODE": "external"})
    assert cfg.state_dir == Path("/srv/x")
    assert cfg.database_url == "postgresql+psycopg://d@db/drover"
    assert cfg.api.port == 9100
    assert cfg.kerberos.mode is config.KerberosMode.EXTERNAL


def test_state_dir_from_environment_finds_its_toml(tmp_path: Path) -> None:
    (tmp_path / "drover.toml").write_text('[kerberos]\nrealm = "EXAMPLE.ORG"\n')
    cfg = config.load(env={"DROVER_STATE_DIR": str(tmp_path)})
    assert cfg.state_dir == tmp_path
    assert cfg.kerberos.realm == "EXAMPLE.ORG"


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("colour = 1\n", {}, "unknown setting colour"),
        ("[api]\nprot = 1\n", {}, "unknown setting api.prot"),
        ("[api]\nport = 'x'\n", {}, "'x' is not a valid int"),
        ("[kerberos]\nmode = 'ldap'\n", {}, "one of: embedded, external"),
        ("[api\n", {}, "not valid TOML"),
        ("api = 3\n", {}, "[api] must be a table"),
        ("", {"DROVER_API_PORT": "eighty"}, "DROVER_API_PORT: 'eighty'"),
        ("", {"DROVER_DATABSE_URL": "x"}, "unknown environment setting DROVER_DATABSE_URL"),
        ("[taskengine]\ncpu_overcommit = 0\n", {}, "0 is not a valid float"),
        ("", {"DROVER_TASKENGINE_CPU_OVERCOMMIT": "nan"}, "'nan' is not a valid float"),
        ("", {"DROVER_TASKENGINE_CPU_OVERCOMMIT": "-2"}, "'-2' is not a valid float"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "drover.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        config.load(path, env=env)
    assert message in str(info.value)


def test_render_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = config.load(env={"DROVER_STATE_DIR": str(tmp_path), "DROVER_API_PORT": "8123"})
    text = config.render(cfg)
    path = tmp_path / "again.toml"
    path.write_text(text)
    assert config.load(path, env={}) == cfg
    assert tomllib.loads(text)["api"]["port"] == 8123
    assert tomllib.loads(text)["taskengine"]["cpu_overcommit"] == 4.0
    assert config.load(env={"DROVER_TASKENGINE_CPU_OVERCOMMIT": "1.5"}).taskengine.cpu_overcommit == 1.5


def test_every_setting_has_an_environment_name() -> None:
    names = config.env_names()
    assert {"DROVER_STATE_DIR", "DROVER_DATABASE_URL", "DROVER_KERBEROS_REALM", "DROVER_API_PORT"} <= names


def test_cli_config_show(tmp_path: Path) -> None:
    proc = _cli({"DROVER_STATE_DIR": str(tmp_path), "DROVER_KERBEROS_REALM": "EXAMPLE.NET"}, "config", "show")
    assert proc.returncode == 0, proc.stderr
    shown = tomllib.loads(proc.stdout)
    assert shown["state_dir"] == str(tmp_path)
    assert shown["kerberos"]["realm"] == "EXAMPLE.NET"
    assert f"# effective url: sqlite:///{tmp_path}/drover.db" in proc.stdout


def test_cli_bad_config_exit_code_and_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[database]\nurll = 'x'\n")
    proc = _cli({"DROVER_CONFIG": str(path)}, "config", "show")
    assert proc.returncode == 2
    first, *rest = proc.stderr.splitlines()
    assert first == f"drover: error: {path}: unknown setting database.urll"
    assert rest == ["drover: hint: see `drover config show` for every valid key"]
    missing = _cli({"DROVER_CONFIG": str(tmp_path / "nope.toml")}, "config", "show")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_cli_help_lists_nouns() -> None:
    proc = _cli({}, "--help")
    assert proc.returncode == 0
    assert "config" in proc.stdout and "realm" in proc.stdout


def test_monitor_settings(tmp_path: Path) -> None:
    cfg = config.load(env={"DROVER_STATE_DIR": str(tmp_path)})
    assert (cfg.monitor.port, cfg.monitor.security_level, cfg.tsdb_url) == (25826, "sign", "http://127.0.0.1:8428")
    text = config.render(cfg)
    assert "[monitor]" in text and "port = 25826" in text and 'tsdb_url = ""' in text
    assert "# effective tsdb_url: http://127.0.0.1:8428" in text
    env = {"DROVER_STATE_DIR": str(tmp_path), "DROVER_MONITOR_TSDB_URL": "http://tsdb.example.test:8428/"}
    assert config.load(env=env).tsdb_url == "http://tsdb.example.test:8428/"
    with pytest.raises(ConfigError, match="one of: none, sign, encrypt"):
        config.load(env={"DROVER_STATE_DIR": str(tmp_path), "DROVER_MONITOR_SECURITY_LEVEL": "paranoid"})
