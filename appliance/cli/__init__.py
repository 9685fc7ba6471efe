"""The `drover` command line: one argparse tree; each noun lives in its own module with a register()."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module

from appliance.errors import DroverError

log = logging.getLogger("drover")

# (noun, module): each module adds its noun (`drover <noun> <verb>`) in register(); the order here is
# the order of `drover --help`. Only the invoked noun's module is imported, so a quick verb such as
# `drover config show` does not pay for uvicorn, SQLAlchemy and Alembic.
NOUNS: tuple[tuple[str, str], ...] = (
    ("config", "appliance.cli.config_cmd"),
    ("ca", "appliance.cli.ca_cmd"),
    ("realm", "appliance.cli.realm_cmd"),
    ("db", "appliance.cli.db_cmd"),
    ("user", "appliance.cli.user_cmd"),
    ("serve", "appliance.cli.serve_cmd"),
    ("whoami", "appliance.cli.api_cmd"),
    ("image", "appliance.cli.image_cmd"),
    ("boot", "appliance.cli.boot_cmd"),
    ("host", "appliance.cli.host_cmd"),
    ("vm", "appliance.cli.vm_cmd"),
    ("task", "appliance.cli.task_cmd"),
    ("cluster", "appliance.cli.cluster_cmd"),
    ("fencer", "appliance.cli.fencer_cmd"),
    ("taskengine", "appliance.cli.taskengine_cmd"),
    ("storage", "appliance.cli.storage_cmd"),
    ("template", "appliance.cli.template_cmd"),
    ("vmpool", "appliance.cli.vmpool_cmd"),
    ("network", "appliance.cli.network_cmd"),
)


def _invoked_noun(argv: Sequence[str]) -> str | None:
    """The noun on the command line, skipping global options (and --config's value)."""
    args = iter(argv)
    for arg in args:
        if arg in ("--config", "--ca"):
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drover",
        description="Manage stateless PXE-booted hypervisor nodes from one appliance.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: $DROVER_CONFIG, /etc/drover)")
    parser.add_argument("--ca", metavar="FILE", help="CA the API's HTTPS certificate must chain to ([api] ca_file)")
    sub = parser.add_subparsers(dest="noun", metavar="COMMAND", required=True)
    wanted = _invoked_noun(argv)
    known = {noun for noun, _ in NOUNS}
    for noun, module in NOUNS:
        if wanted not in known or noun == wanted:
            import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
