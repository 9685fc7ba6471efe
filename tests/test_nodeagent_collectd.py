"""The node agent's collectd.conf: what collectd itself accepts (`collectd -t`), per security level, written 0600."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nodeagent import collectd, wire


@pytest.mark.parametrize("level", ["None", "Sign", "Encrypt"])
def test_rendered_config_passes_collectds_own_check(tmp_path: Path, level: str) -> None:
    settings = wire.Collectd("appliance.example.test", 25826, level, "drover-host-3", 'pa"ss\\word')
    text = collectd.render(settings, "node3.example.test")
    assert ('Username "drover-host-3"' in text) == (level != "None")
    assert 'Password "pa\\"ss\\\\word"' in text or level == "None"
    conf = tmp_path / "collectd.conf"
    conf.write_text(f'BaseDir "{tmp_path}"\nPIDFile "{tmp_path}/pid"\n' + text)
    check = subprocess.run(["collectd", "-t", "-C", str(conf)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="Paranoid"):
        collectd.render(wire.Collectd("a", 1, "Paranoid", "u", "p"), "n")


def test_configure_writes_once_and_0600(tmp_path: Path) -> None:
    paths = collectd.CollectdPaths().under(tmp_path)
    text = collectd.render(wire.Collectd("a", 1, "Sign", "u", "p"), "n.example.test")
    assert collectd.configure(paths, text) is True
    assert paths.conf.stat().st_mode & 0o777 == 0o600
    assert collectd.configure(paths, text) is False  # unchanged: no restart
    assert collectd.configure(paths, text.replace('"p"', '"q"')) is True


@pytest.mark.parametrize(("interval", "refresh"), [(10, 30), (1, 3), (2, 6)])
def test_virt_looks_for_new_domains_every_three_intervals(interval: int, refresh: int) -> None:
    # A VM migrated in shows within three intervals at any interval (the lab's 1 s as the node's 10 s).
    text = collectd.render(wire.Collectd("a", 1, "Sign", "u", "p"), "n.example.test", interval=interval)
    assert f"Interval {interval}\n" in text
    assert f"  RefreshInterval {refresh}\n" in text
    assert 'PluginInstanceFormat "uuid"' in text
    assert "RefreshInterval" not in collectd.render(wire.Collectd("a", 1, "Sign", "u", "p"), "n", virt=False)
