"""sd_notify from the node agent: READY=1 once, from the first outcome or the deadline, on a real socket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.notify import Readiness


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@drover-test-{os.getpid()}-{time.monotonic_ns()}"  # abstract, as systemd uses for some units
    sock.bind("\0" + name[1:])
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    yield sock
    sock.close()


def messages(sock: socket.socket, wait: float) -> list[str]:
    sock.settimeout(wait)
    got: list[str] = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            return got


def test_ready_is_sent_once_with_its_reason(notify_socket: socket.socket) -> None:
    readiness = Readiness(deadline=30)
    readiness.start()
    readiness.ready("host 3 approved")
    readiness.ready("host 3 approved, again")  # a later session: systemd must not hear it twice
    readiness.status("heartbeating")
    assert messages(notify_socket, 0.3) == ["READY=1\nSTATUS=host 3 approved", "STATUS=heartbeating"]
    assert readiness.sent


def test_deadline_makes_the_agent_ready_without_an_appliance(notify_socket: socket.socket) -> None:
    started = time.monotonic()
    readiness = Readiness(deadline=0.3)
    readiness.start()
    (first,) = messages(notify_socket, 1.0)
    assert first.startswith("READY=1\nSTATUS=no enrolment outcome yet") and time.monotonic() - started >= 0.3
    readiness.ready("host 3 approved")  # too late to matter, and not sent again
    assert messages(notify_socket, 0.2) == []


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    readiness = Readiness(deadline=30)
    readiness.ready("host 3 approved")  # no socket: a quiet no-op, not an error
    assert readiness.sent
