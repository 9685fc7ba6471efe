"""collectd's types.db: the data-source names and kinds of each type, read from the installed collectd.

The wire carries only the kinds of a value list's values, not their names; `load` has shortterm,
midterm and longterm, `if_octets` rx and tx. Without the file a receiver could not name them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ConfigError
from monitor.protocol import DsType

# Debian's collectd-core and Fedora's collectd both put it here.
DEFAULT_PATHS = (Path("/usr/share/collectd/types.db"),)


@dataclass(frozen=True, slots=True)
class DataSource:
    name: str
    kind: DsType


def parse(text: str) -> dict[str, tuple[DataSource, ...]]:
    """`name ds:KIND:min:max, ...` per line; comments and blank lines ignored; a bad line is an error."""
    types: dict[str, tuple[DataSource, ...]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *specs = re.split(r"[,\s]+", line)  # collectd's own file separates some specs by blanks only
        sources: list[DataSource] = []
        for spec in specs:
            fields = spec.split(":")
            if len(fields) != 4 or fields[1] not in DsType.__members__:
                raise ConfigError(f"types.db line {number}: not `name ds:KIND:min:max`: {line!r}")
            sources.append(DataSource(fields[0], DsType[fields[1]]))
        if not sources:
            raise ConfigError(f"types.db line {number}: {name!r} has no data sources")
        types[name] = tuple(sources)
    return types


def load(path: Path | None = None) -> dict[str, tuple[DataSource, ...]]:
    candidates = (path,) if path is not None else DEFAULT_PATHS
    for candidate in candidates:
        if candidate.is_file():
            return parse(candidate.read_text())
    raise ConfigError(
        f"collectd's types.db not found (looked at {', '.join(map(str, candidates))})",
        "install collectd-core, or set [monitor] types_db",
    )
