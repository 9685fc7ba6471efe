"""`drover config show`: the effective configuration with every default visible."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from appliance import config
from appliance.cli.context import load_config


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="show the effective configuration")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    show = verbs.add_parser("show", help="print the effective config (file + DROVER_* environment + defaults)")
    show.set_defaults(func=show_config)


def show_config(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    source = Path(args.config) if args.config else config.config_file(os.environ)
    print(config.render(cfg, source), end="")
    return 0
