"""`drover ca export|show`: the appliance's own CA, for browsers and for CLIs on other machines (--ca FILE)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from appliance import tls
from appliance.cli.context import load_config
from appliance.errors import NotFound, UsageError
from appliance.pki import Pki


def register(sub: Any) -> None:
    p = sub.add_parser("ca", help="the appliance's CA: export it for browsers and remote CLIs, show what is served")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    export = verbs.add_parser("export", help="print the CA certificate (PEM) that vouches for the API and nodes")
    export.add_argument("--out", metavar="FILE", help="write it to FILE instead of standard output")
    export.set_defaults(func=export_ca)
    show = verbs.add_parser("show", help="the CA's fingerprint and the certificate the web UI and API present")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=show_ca)


def _pki(args: argparse.Namespace) -> tuple[Pki, Any]:
    cfg = load_config(args)
    pki = Pki(cfg.pki_dir)
    if not pki.ca_cert.is_file():
        raise NotFound(f"no CA in {pki.root} yet", "`drover serve` makes it on its first start")
    return pki, cfg


def export_ca(args: argparse.Namespace) -> int:
    pki, _cfg = _pki(args)
    pem = pki.ca_pem()
    if args.out:
        try:
            Path(args.out).write_text(pem)
        except OSError as exc:
            raise UsageError(f"--out {args.out}: cannot write: {exc.strerror}") from None
    else:
        print(pem, end="")
    return 0


def show_ca(args: argparse.Namespace) -> int:
    pki, cfg = _pki(args)
    served = cfg.api.cert_file or (str(pki.server_cert) if cfg.api_tls else "")
    info = {
        "ca": str(pki.ca_cert),
        "fingerprint": pki.fingerprint(),
        "api": tls.describe(cfg),
        "api_url": cfg.api_url,
        "certificate": served,
        "not_after": tls.not_after(Path(served)).isoformat() if served and Path(served).is_file() else None,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        print(f"{key + ':':<13}{value if value is not None else '-'}")
    return 0
