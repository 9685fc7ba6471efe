"""The lab's restart server (tests/lab/agent_node.py) once closed takes no request meant for a later one.

The cause of a full-run flake: a server thread left blocked in accept(2) on a closed socket fd; a stop and
continue of this process restarts that system call with the same fd number, which by then names a later
test's socket, and the stale thread answered one of its requests. Here the process really is stopped and
continued, as that happened in full runs; no libvirtd is started (every restart is scripted to fail).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from tests.lab.agent_node import RestartServer
from tests.lab.libvirtd import LabNode


def _never() -> LabNode:
    raise AssertionError("no libvirtd in this test")


def _ask(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"restart")
        return s.recv(4096)


def test_a_closed_restart_server_takes_no_request_meant_for_a_later_one(tmp_path: Path) -> None:
    first = RestartServer(tmp_path / "first.sock", _never)
    first.fail_next = 100
    time.sleep(0.2)  # its thread is now blocked in accept()
    fd = first.sock.fileno()
    first.close()
    second = RestartServer(tmp_path / "second.sock", _never)
    second.fail_next = 100
    try:
        assert second.sock.fileno() == fd  # the number is reused, as in a full run
        time.sleep(0.2)
        # Stopped and continued: a blocked accept() is restarted by the kernel with its old arguments.
        subprocess.run(["sh", "-c", f"kill -STOP {os.getpid()}; sleep 0.3; kill -CONT {os.getpid()}"], check=True)
        answers = [_ask(second.path) for _ in range(4)]
    finally:
        second.close()
    assert all(a.startswith(b"1libvirtd failed to start") for a in answers), answers
    assert [payload for _, payload in second.requests] == [b"restart"] * 4
    assert first.requests == [] and first.fail_next == 100
    assert not first.thread.is_alive()
