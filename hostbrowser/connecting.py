"""Connecting off the browser thread: a few worker threads, one attempt per host, hung attempts written off.

libvirt.open has no timeout: a host that accepts TCP but never answers (a frozen libvirtd) holds the calling
thread until it answers or its socket dies. So connects run here, never in the browser thread, and:

- a call running longer than a connect normally takes (`slow_after`) is set aside: a fresh worker takes its
  place, so a few hanging hosts never leave the rest of the fleet waiting for their deadline;
- a call still running at the deadline is abandoned: its owner is told (the host is reported unavailable).

A set-aside thread exits once its call returns. The host gets no new attempt until then (one attempt per
host), which bounds such threads by the hosts that hang; MAX_STUCK_PER_WORKER bounds them again, after which
the pool shrinks rather than grow without limit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# How many set-aside (stuck) threads the pool tolerates per configured worker before it stops replacing
# them. Every realistic hang ends (a thawed or killed daemon, TCP giving up after its retries), so these are
# temporary; the cap only matters when a whole rack hangs at once.
MAX_STUCK_PER_WORKER = 16


def slow_after(timeout: float) -> float:
    """When a connect counts as slow: well past a normal one (Kerberos + SASL + listing, tens of ms on a LAN)."""
    return min(timeout, max(1.0, timeout / 5))


@dataclass(eq=False)
class Attempt:
    key: int  # the host id: at most one attempt per key is queued or running
    run: Callable[[], object]
    on_abandon: Callable[[], None]  # called in the thread that calls expire()
    started: float | None = None
    abandoned: bool = False


@dataclass(eq=False)
class _Worker:
    thread: threading.Thread | None = None
    attempt: Attempt | None = None
    retired: bool = False  # set aside with a slow call: exit once the call returns


class ConnectPool:
    def __init__(self, workers: int, timeout: float, name: str = "hostbrowser-connect") -> None:
        self.size = max(1, workers)
        self.timeout = max(0.1, timeout)
        self.slow_after = slow_after(self.timeout)
        self.max_stuck = self.size * MAX_STUCK_PER_WORKER
        self.name = name
        self.abandoned = 0  # attempts abandoned so far (status, tests)
        self._queue: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._inflight: dict[int, Attempt] = {}
        self._workers: list[_Worker] = []  # the pool proper; set-aside workers are only counted in _stuck
        self._stuck = 0
        self._spawned = 0
        self._running = False
        self._warned_full = False

    def start(self) -> None:
        with self._lock:
            self._running = True
            self._top_up()

    def submit(self, key: int, run: Callable[[], object], on_abandon: Callable[[], None]) -> bool:
        """Queue an attempt for `key`; False if one is already queued or running (abandoned ones included)."""
        with self._lock:
            if not self._running or key in self._inflight:
                return False
            attempt = Attempt(key, run, on_abandon)
            self._inflight[key] = attempt
        self._queue.put(attempt)
        return True

    def busy(self, key: int) -> bool:
        with self._lock:
            return key in self._inflight

    def expire(self, now: float) -> int:
        """Set slow calls aside (replacing their workers) and abandon those past the deadline; returns how
        many were abandoned now. Called periodically by the browser thread."""
        overdue: list[Attempt] = []
        with self._lock:
            for worker in self._workers:
                attempt = worker.attempt
                if attempt is not None and attempt.started is not None and now - attempt.started >= self.slow_after:
                    worker.retired = True
                    self._stuck += 1
            self._workers = [w for w in self._workers if not w.retired]
            self._top_up()
            for attempt in self._inflight.values():
                if not attempt.abandoned and attempt.started is not None and now - attempt.started >= self.timeout:
                    attempt.abandoned = True
                    overdue.append(attempt)
            self.abandoned += len(overdue)
        for attempt in overdue:
            try:
                attempt.on_abandon()
            except Exception:  # a daemon logs and carries on
                log.exception("reporting an abandoned connect failed")
        return len(overdue)

    def stop(self, timeout: float = 5) -> None:
        """Idle workers exit, queued attempts are dropped; a worker inside a call is not waited for long."""
        with self._lock:
            self._running = False
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for worker in workers:
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))

    def status(self) -> dict[str, int]:
        with self._lock:
            return {
                "workers": len(self._workers),
                "stuck": self._stuck,
                "in_flight": len(self._inflight),
                "abandoned": self.abandoned,
            }

    def _top_up(self) -> None:
        """Start workers until the pool has its size again (lock held), unless too many are stuck."""
        while self._running and len(self._workers) < self.size:
            if len(self._workers) + self._stuck >= self.size + self.max_stuck:
                if not self._warned_full:
                    log.error("%d connects stuck in hosts that never answer: not starting more workers", self._stuck)
                    self._warned_full = True
                return
            self._spawned += 1
            worker = _Worker()
            worker.thread = threading.Thread(
                target=self._work, args=(worker,), name=f"{self.name}-{self._spawned}", daemon=True
            )
            self._workers.append(worker)
            worker.thread.start()

    def _work(self, me: _Worker) -> None:
        while True:
            attempt = self._queue.get()
            if attempt is None:
                return
            with self._lock:
                if not self._running:
                    self._inflight.pop(attempt.key, None)
                    continue
                attempt.started, me.attempt = time.monotonic(), attempt
            try:
                attempt.run()
            except Exception:  # the only worker of this slot must not die with it
                log.exception("connect attempt for host %s failed", attempt.key)
            with self._lock:
                me.attempt = None
                if self._inflight.get(attempt.key) is attempt:
                    del self._inflight[attempt.key]
                if me.retired:
                    self._stuck -= 1
                    self._warned_full = False
                    if attempt.abandoned:
                        log.info("abandoned connect for host %s returned after %.1fs", attempt.key,
                                 time.monotonic() - (attempt.started or 0))  # fmt: skip
                    self._top_up()
                    return
