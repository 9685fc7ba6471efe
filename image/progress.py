"""The build's progress display: numbered stages, bytes produced so far and elapsed time.

On a terminal one status line is redrawn in place; otherwise (CI logs, tests) a line is printed
when a stage starts and ends and every `interval` seconds in between, so logs stay readable.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_seconds(s: float) -> str:
    m, sec = divmod(int(s), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def path_bytes(path: Path) -> int:
    """Size of a file, or of everything below a directory (without following links); 0 if absent."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.stat().st_size if path.exists() else 0
    except OSError:
        return 0
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue  # files come and go while a build runs
    return total


class Progress:
    """Stages are announced with `stage()`; command output lines go to `line()`."""

    def __init__(self, total: int, stream: TextIO | None = None, interval: float = 15.0) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 1.0 if self.tty else interval
        self.started = time.monotonic()
        self.number = 0
        self.name = ""
        self.detail = ""
        self.watched: Path | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def _status(self) -> str:
        size = f" {human_bytes(path_bytes(self.watched))}" if self.watched is not None else ""
        elapsed = human_seconds(time.monotonic() - self.started)
        detail = f"  {self.detail[:60]}" if self.detail else ""
        return f"[{self.number}/{self.total}] {self.name}{size} {elapsed}{detail}"

    def _emit(self, text: str, final: bool = False) -> None:
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K" + text + ("\n" if final else ""))
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._emit(self._status())

    @contextmanager
    def stage(self, name: str, watch: Path | None = None) -> Iterator[None]:
        """Announce a stage, report `watch`'s size while it runs, and its result when it ends."""
        self.number += 1
        self.name, self.detail, self.watched = name, "", watch
        begun = time.monotonic()
        self._emit(self._status())
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._ticker.start()
        try:
            yield
        finally:
            self._stop.set()
            self._ticker.join()
        size = f", {human_bytes(path_bytes(watch))}" if watch is not None else ""
        self.detail = ""
        self._emit(f"[{self.number}/{self.total}] {name} done in {human_seconds(time.monotonic() - begun)}{size}", True)

    def line(self, text: str) -> None:
        """One line of a command's output: kept as the stage's detail ("drover:" lines always shown)."""
        text = text.strip()
        if not text:
            return
        self.detail = text
        if text.startswith("drover:") and not self.tty:
            self._emit(f"[{self.number}/{self.total}] {self.name}: {text.removeprefix('drover:').strip()}")

    def note(self, text: str) -> None:
        self._emit(text, True)

    def finish(self, text: str) -> None:
        self._emit(f"{text} ({human_seconds(time.monotonic() - self.started)})", True)
