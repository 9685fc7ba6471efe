"""The one subprocess wrapper: typed errors that name the command and the fix."""

from __future__ import annotations

import os

import pytest

from appliance.errors import CommandFailed, ToolMissing
from appliance.runner import run


def test_output_and_explicit_environment() -> None:
    os.environ["DROVER_TEST_LEAK"] = "1"
    try:
        proc = run(["sh", "-c", 'echo "$A:${DROVER_TEST_LEAK:-unset}"'], env={"A": "x"})
    finally:
        del os.environ["DROVER_TEST_LEAK"]
    assert proc.stdout == "x:unset\n"


def test_stdin_is_closed() -> None:
    assert run(["cat"]).stdout == ""
    assert run(["cat"], input="fed").stdout == "fed"


def test_failure_names_the_command() -> None:
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", "echo boom >&2; exit 3", "arg with space"])
    assert info.value.returncode == 3
    assert "'arg with space'" in info.value.message
    assert info.value.message.endswith(": boom")


def test_missing_tool_names_the_package() -> None:
    os.environ["PATH"], saved = "/nonexistent", os.environ["PATH"]
    try:
        with pytest.raises(ToolMissing) as info:
            run(["mksquashfs", "-version"])
    finally:
        os.environ["PATH"] = saved
    assert "apt-get install squashfs-tools" in info.value.hint


def test_unknown_tool() -> None:
    with pytest.raises(ToolMissing):
        run(["drover-no-such-tool"])


def test_timeout_is_a_failure() -> None:
    with pytest.raises(CommandFailed, match="timed out"):
        run(["sleep", "5"], timeout=0.2)
