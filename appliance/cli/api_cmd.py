"""`drover whoami` and the helper every API-backed verb uses to get a client for the appliance."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from appliance.cli.context import load_config
from appliance.client import Client
from appliance.config import Config


def register(sub: Any) -> None:
    p = sub.add_parser("whoami", help="ask the API who your Kerberos ticket says you are, and your roles")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    p.set_defaults(func=whoami)


def client_for(cfg: Config) -> Client:
    """A client for cfg's API under the caller's own ticket (KRB5CCNAME or the default ccache).

    On the appliance itself the embedded realm's krb5.conf is used when the caller has not chosen
    one, so `kinit` + `drover whoami` work without exporting KRB5_CONFIG first.
    """
    krb5_conf = cfg.realm_dir / "krb5.conf"
    if "KRB5_CONFIG" not in os.environ and os.access(krb5_conf, os.R_OK):
        os.environ["KRB5_CONFIG"] = str(krb5_conf)
    return Client.from_config(cfg)


def whoami(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        me = api.get("/api/v1/whoami")
    if args.json:
        print(json.dumps(me, indent=2))
        return 0
    print(f"principal: {me['principal']}")
    print(f"roles:     {', '.join(me['roles']) or '(none)'}")
    return 0
