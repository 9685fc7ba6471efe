"""The node agent's one subprocess wrapper (stdlib only: the agent cannot import appliance.runner)."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)


class CommandFailed(RuntimeError):
    """A command exited non-zero or could not be started; the text shows the command to paste."""


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 30) -> str:
    """Run argv with stdin closed and return its stdout; raise CommandFailed with the command line."""
    line = shlex.join(argv)
    log.debug("run: %s", line)
    environ = dict(env) if env is not None else {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    try:
        done = subprocess.run(
            list(argv),
            check=False,
            env=environ,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandFailed(f"{line}: {exc}") from None
    if done.returncode != 0:
        raise CommandFailed(f"{line}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout
