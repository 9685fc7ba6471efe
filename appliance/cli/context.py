"""What every CLI handler needs: the effective configuration, loaded once per invocation."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance import config


def load_config(args: argparse.Namespace) -> config.Config:
    path = Path(args.config) if getattr(args, "config", None) else None
    return config.load(path)
