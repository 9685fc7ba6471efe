"""Watch the keytab and libvirtd's config with pyinotify; call back when someone changes or deletes them.

The parent directories are watched, not the files: an atomic rename or a delete ends a file watch.
pyinotify (0.9.6) imports asyncore, deprecated but present on Debian 12's Python 3.11: this module is
the only place that imports it. The callback must be idempotent; our own atomic writes fire it too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Watcher:
    def __init__(self, paths: Iterable[Path], on_change: Callable[[Path], None], settle: float = 0.2) -> None:
        self.paths = {p.resolve() for p in paths}
        self.on_change = on_change
        self.settle = settle  # coalesce a burst of events (write + rename) into one callback
        self._notifier: Any = None
        self._pending: set[Path] = set()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        import pyinotify  # noqa: PLC0415 - distro package, imported on use: the venv tests import this module without it

        mask = (
            pyinotify.IN_CLOSE_WRITE
            | pyinotify.IN_DELETE
            | pyinotify.IN_MOVED_TO
            | pyinotify.IN_MOVED_FROM
            | pyinotify.IN_ATTRIB
        )
        manager = pyinotify.WatchManager()
        watcher = self

        class Handler(pyinotify.ProcessEvent):  # type: ignore[misc]
            def process_default(self, event: Any) -> None:
                watcher._event(Path(event.pathname))

        for directory in sorted({p.parent for p in self.paths}):
            directory.mkdir(parents=True, exist_ok=True)
            manager.add_watch(str(directory), mask)
        self._notifier = pyinotify.ThreadedNotifier(manager, Handler())
        self._notifier.daemon = True
        self._notifier.start()
        log.info("watching %s", ", ".join(str(p) for p in sorted(self.paths)))

    def _event(self, path: Path) -> None:
        if path not in self.paths:
            return
        with self._lock:
            self._pending.add(path)
            if self._timer is None:
                self._timer = threading.Timer(self.settle, self._fire)
                self._timer.daemon = True
                self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            pending, self._pending, self._timer = self._pending, set(), None
        for path in sorted(pending):
            try:
                self.on_change(path)
            except Exception:
                log.exception("re-applying %s failed", path)

    def stop(self) -> None:
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
