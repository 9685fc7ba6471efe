"""The heartbeat schedule: the appliance's interval with random jitter, a shorter bounded back-off after
errors, and `Event.wait()` as the sleep so that stopping is immediate (ironic-python-agent's pattern)."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Schedule:
    jitter: float = 0.2  # +-20% so a rack of nodes that booted together spreads out
    error_base: float = 1.0  # first retry after an error
    error_max: float = 30.0  # back-off never grows beyond this (nor beyond the normal interval)
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self, interval: float, errors: int) -> float:
        if errors <= 0:
            base = interval
        else:
            base = min(self.error_base * 2 ** (errors - 1), self.error_max, max(interval, self.error_base))
        return max(0.05, base * self.rng.uniform(1 - self.jitter, 1 + self.jitter))


def loop(beat: Callable[[], float], stop: threading.Event, schedule: Schedule, first_interval: float) -> None:
    """Call beat() until stop is set; beat returns the next interval in seconds or raises on failure."""
    interval = first_interval
    errors = 0
    while not stop.is_set():
        try:
            interval = beat()
            errors = 0
        except Exception as exc:
            errors += 1
            log.warning("heartbeat failed (%s in a row): %s", errors, exc)
        delay = schedule.next_delay(interval, errors)
        log.debug("next heartbeat in %.2fs", delay)
        stop.wait(delay)
