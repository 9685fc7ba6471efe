"""Run every benchmark section that exists and merge their figures into bench/results/latest.json.

A section is a module in bench/ with `run() -> dict`; each reports figures as ratios against a
baseline measured in the same run, so numbers from different machines stay comparable.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from importlib import import_module
from pathlib import Path
from typing import Any

from bench import table

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS: tuple[str, ...] = (
    "api", "image", "enrolment", "pxe", "taskengine", "storage", "monitor", "ui", "fuzz", "load",
)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    wanted = set(argv) or set(SECTIONS)
    latest = RESULTS / "latest.json"
    merged: dict[str, Any] = json.loads(latest.read_text()) if latest.is_file() else {}
    for name in SECTIONS:  # a section not run now keeps its last committed figures (the table says so)
        saved = RESULTS / f"{name}.json"
        if name not in merged and saved.is_file():
            merged[name] = json.loads(saved.read_text())
    merged["machine"] = {"cpus": len(__import__("os").sched_getaffinity(0)), "python": platform.python_version()}
    failed = 0
    for name in SECTIONS:
        if name not in wanted:
            continue
        started = time.monotonic()
        try:
            figures = import_module(f"bench.{name}").run()
        except Exception as exc:  # one broken section must not hide the others' figures
            logging.exception("section %s failed", name)
            figures = {"error": str(exc)}
            failed += 1
        figures["wall_seconds"] = round(time.monotonic() - started, 2)
        figures["finished_at"] = _now()
        merged[name] = figures
        (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    merged["finished_at"] = _now()
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    summary = table.render(merged)
    (RESULTS / "latest.md").write_text(summary)
    print(summary)
    return 1 if failed else 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
