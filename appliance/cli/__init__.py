"""The `drover` command line: one argparse tree; each noun lives in its own module with a register()."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module

from appliance.errors import DroverError

log = logging.getLogger("drover")

# Each module adds one noun (`drover <noun> <verb>`); the order here is the order of `drover --help`.
NOUNS = (
    "appliance.cli.config_cmd",
    "appliance.cli.realm_cmd",
    "appliance.cli.image_cmd",
    "appliance.cli.serve_cmd",
    "appliance.cli.api_cmd",
    "appliance.cli.db_cmd",
    "appliance.cli.user_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drover",
        description="Manage stateless PXE-booted hypervisor nodes from one appliance.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: $DROVER_CONFIG, /etc/drover)")
    sub = parser.add_subparsers(dest="noun", metavar="COMMAND", required=True)
    for name in NOUNS:
        import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.func(args)
        return result
    except DroverError as exc:
        print(f"drover: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"drover: hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("drover: interrupted", file=sys.stderr)
        return 130
