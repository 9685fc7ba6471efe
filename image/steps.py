"""A build as a list of external commands: what `--dry-run` prints and what a real build runs."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.runner import run, which
from image.progress import Progress


@dataclass(frozen=True)
class Step:
    """One stage of a build: an optional in-process preparation, then one external command."""

    name: str
    argv: tuple[str, ...]
    watch: Path | None = None  # the file or tree whose size shows the stage's progress
    prepare: Callable[[], None] | None = field(default=None, compare=False)
    # Commands the step's own child runs (e.g. mmdebstrap's hooks), shown by --dry-run only.
    inner: tuple[tuple[str, ...], ...] = ()


def tools(steps: list[Step]) -> list[str]:
    """Every program the steps start, in order, without duplicates."""
    seen: list[str] = []
    for step in steps:
        for argv in (step.argv, *step.inner):
            # A wrapper (`unshare ... -- mmdebstrap`) is named after the tool it wraps: that is news.
            names = [argv[argv.index("--") + 1], argv[0]] if "--" in argv[:-1] else [argv[0]]
            seen += [name for name in names if name not in seen]
    return seen


def check_tools(names: list[str]) -> None:
    """Fail before minutes of work if a program is missing (ToolMissing names its package)."""
    for name in names:
        if "/" not in name and not name.startswith("$"):
            which(name)


def describe(steps: list[Step]) -> list[str]:
    lines = []
    for number, step in enumerate(steps, 1):
        lines.append(f"# [{number}/{len(steps)}] {step.name}")
        lines.append(shlex.join(step.argv))
        lines += [f"#   runs: {shlex.join(argv)}" for argv in step.inner]
    return lines


def execute(steps: list[Step], progress: Progress) -> None:
    for step in steps:
        with progress.stage(step.name, step.watch):
            if step.prepare is not None:
                step.prepare()
            run(step.argv, on_output=progress.line)
