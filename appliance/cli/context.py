"""What every CLI handler needs: the effective configuration, loaded once per invocation; paging options."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from appliance import config


def load_config(args: argparse.Namespace) -> config.Config:
    path = Path(args.config) if getattr(args, "config", None) else None
    cfg = config.load(path)
    if getattr(args, "ca", None):
        # --ca FILE: the CA this invocation verifies the API against, over [api] ca_file.
        cfg = dataclasses.replace(cfg, api=dataclasses.replace(cfg.api, ca_file=args.ca))
    return cfg


def _whole(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def paging(parser: argparse.ArgumentParser) -> None:
    """--limit/--offset of a list verb; without them it reads every page."""
    parser.add_argument("--limit", type=_whole, metavar="N", help="show at most N (default: all)")
    parser.add_argument("--offset", type=_whole, default=0, metavar="N", help="skip the first N")
