"""Stopping a lab child process: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import subprocess


def terminate(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """Stop `process` (if still running) and return its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
