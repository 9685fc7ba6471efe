"""The time-series engine from drover's side: batched writes, PromQL queries, and the embedded VictoriaMetrics.

Writes go to `/api/v1/import/prometheus` (VictoriaMetrics; text exposition lines with timestamps)
from one writer thread. The receiver only appends to a bounded buffer: when the TSDB is slow or
down, lines wait there (the oldest dropped and counted once it is full) and go out when it answers
again, so the receiver never stalls on storage. Queries use the Prometheus HTTP API, which any
PromQL-compatible service answers.
"""

from __future__ import annotations

import collections
import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from appliance.errors import CommandFailed
from appliance.runner import spawn, which
from appliance.timeseries import TsdbError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterSettings:
    batch_lines: int = 20000  # one POST carries at most this many samples
    flush_ms: int = 1000  # and goes out at least this often while lines wait
    buffer_lines: int = 2_000_000  # lines held while the TSDB is down; past this the oldest are dropped
    retry_ms: int = 1000


class Writer:
    def __init__(self, url: str, settings: WriterSettings = WriterSettings()) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        self._buffer: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=10)
        self.stored = 0  # samples the TSDB accepted
        self.dropped = 0  # samples dropped because the buffer was full
        self.write_errors = 0  # failed POSTs (each retried)
        self.last_error = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="monitor-tsdb-writer", daemon=True)
        self._thread.start()

    def stop(self, drain_seconds: float = 5.0) -> None:
        """Flush what waits (for at most drain_seconds), then stop."""
        deadline = time.monotonic() + drain_seconds
        while self._buffer and time.monotonic() < deadline and not self.last_error:
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self._client.close()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def add(self, lines: list[str]) -> None:
        """Queue samples; never blocks on the TSDB."""
        buffer = self._buffer
        with self._lock:
            buffer.extend(lines)
            over = len(buffer) - self.settings.buffer_lines
            if over > 0:  # the TSDB has been away long enough: the oldest samples go first
                for _ in range(over):
                    buffer.popleft()
                self.dropped += over
        if len(buffer) >= self.settings.batch_lines:
            self._wake.set()

    def _take(self) -> list[str]:
        with self._lock:
            n = min(len(self._buffer), self.settings.batch_lines)
            return [self._buffer.popleft() for _ in range(n)]

    def _giveback(self, batch: list[str]) -> None:
        with self._lock:
            room = self.settings.buffer_lines - len(self._buffer)
            keep = batch[-room:] if room > 0 else []
            self.dropped += len(batch) - len(keep)
            self._buffer.extendleft(reversed(keep))

    def _loop(self) -> None:
        while not self._stop.is_set():
            if len(self._buffer) < self.settings.batch_lines:
                self._wake.wait(self.settings.flush_ms / 1000)
                self._wake.clear()
            batch = self._take()
            if not batch:
                continue
            try:
                self._post(batch)
            except (httpx.HTTPError, TsdbError) as exc:
                self.write_errors += 1
                if not self.last_error:
                    log.warning("TSDB write to %s failed, buffering: %s", self.url, exc)
                self.last_error = str(exc)
                self._giveback(batch)
                self._stop.wait(self.settings.retry_ms / 1000)
                continue
            if self.last_error:
                log.info("TSDB at %s answers again", self.url)
                self.last_error = ""
            self.stored += len(batch)

    def _post(self, batch: list[str]) -> None:
        body = ("\n".join(batch) + "\n").encode()
        response = self._client.post(f"{self.url}/api/v1/import/prometheus", content=body)
        if response.status_code >= 300:
            raise TsdbError(f"TSDB refused a write: HTTP {response.status_code}: {response.text[:200]}")


class Embedded:
    """VictoriaMetrics under the state dir, started and stopped by `drover serve` (like the KDC)."""

    def __init__(self, data_dir: Path, listen: str, port: int, retention: str, log_file: Path) -> None:
        self.data_dir = data_dir
        self.listen = listen
        self.port = port
        self.retention = retention
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen}:{self.port}"

    def start(self, timeout: float = 30) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            which("victoria-metrics"),
            "-storageDataPath", str(self.data_dir),
            "-httpListenAddr", f"{self.listen}:{self.port}",
            "-retentionPeriod", self.retention,
            # Queries otherwise leave out the newest 30 s, a guard for slow scrapers; drover's writer
            # flushes every [monitor] flush_ms, so graphs and `host metrics` may show data 2 s old.
            "-search.latencyOffset", "2s",
        ]  # fmt: skip
        self.process = spawn(argv, log_file=self.log_file)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-1500:] if self.log_file.is_file() else ""
                raise CommandFailed(f"victoria-metrics exited with {self.process.returncode}: {tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise CommandFailed(f"victoria-metrics did not answer on {self.url} within {timeout}s")
            time.sleep(0.05)
        log.info("embedded VictoriaMetrics at %s, data in %s, retention %s", self.url, self.data_dir, self.retention)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
