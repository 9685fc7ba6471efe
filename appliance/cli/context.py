"""What every CLI handler needs: the effective configuration, loaded once per invocation."""

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
