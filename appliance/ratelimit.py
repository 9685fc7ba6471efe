"""A per-source request budget: at most N requests a minute from one address, counted in memory.

For the unauthenticated node-facing endpoints (boot scripts, identify): they write to the database, so a
flood from one address must not become a flood of rows. Per process; a restart forgets the counts.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from appliance.errors import TooManyRequests

WINDOW_SECONDS = 60.0
MAX_SOURCES = 65536  # tracked addresses; past this the oldest are forgotten (bounded memory under a spray)


class RateLimit:
    def __init__(self, per_minute: int, what: str) -> None:
        self.per_minute = per_minute
        self.what = what
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, source: str, now: float | None = None) -> None:
        """Count one request from `source`, or raise TooManyRequests (429) without counting it. 0 = no limit."""
        if self.per_minute <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.pop(source, None) or deque()
            while times and times[0] <= now - WINDOW_SECONDS:
                times.popleft()
            self._seen[source] = times  # re-inserted: dict order is least recently used first
            if len(times) >= self.per_minute:
                retry = int(times[0] + WINDOW_SECONDS - now) + 1
                raise TooManyRequests(
                    f"{self.what}: more than {self.per_minute} a minute from {source}",
                    f"try again in {retry} s",
                )
            times.append(now)
            while len(self._seen) > MAX_SOURCES:
                del self._seen[next(iter(self._seen))]
