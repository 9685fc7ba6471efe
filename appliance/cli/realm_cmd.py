"""`drover realm ...`: create, start and inspect the Kerberos realm; add principals and export keytabs."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from appliance import statedir
from appliance.bootstrap import grant_first_admin
from appliance.cli.api_cmd import client_for
from appliance.cli.context import load_config
from appliance.config import KerberosMode
from appliance.kerberos import health
from appliance.kerberos.realm import FIRST_ADMIN, Realm


def register(sub: Any) -> None:
    p = sub.add_parser("realm", help="the Kerberos realm: embedded KDC or an existing realm")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs.add_parser("init", help="create the embedded realm, its KDC database and the appliance keytabs").set_defaults(
        func=init
    )
    verbs.add_parser("start", help="start the embedded KDC (a daemon with a pid file)").set_defaults(func=start)
    verbs.add_parser("stop", help="stop the embedded KDC").set_defaults(func=stop)
    checks = "check the realm: KDC, kadmind, keytabs, admin rights, and how to fix each"
    verbs.add_parser("status", help=checks).set_defaults(func=status)
    verbs.add_parser("check", help="the same checks, run by the appliance's server (through the API, as you)"
                     ).set_defaults(func=check)  # fmt: skip
    add = verbs.add_parser("add-principal", help="create a principal (random key, or a password from stdin)")
    add.add_argument("principal")
    add.add_argument("--password-stdin", action="store_true", help="read a password from standard input")
    add.set_defaults(func=add_principal)
    kt = verbs.add_parser("keytab", help="export a principal's keys to a keytab file (0600)")
    kt.add_argument("principal")
    kt.add_argument("path", type=Path)
    kt.set_defaults(func=keytab)
    verbs.add_parser("list", help="list the realm's principals").set_defaults(func=list_principals)


def _realm(args: argparse.Namespace) -> Realm:
    return Realm.from_config(load_config(args))


def init(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    statedir.secure_dir(cfg.state_dir)
    realm = Realm.from_config(cfg)
    created = realm.create()
    granted = grant_first_admin(cfg, f"{FIRST_ADMIN}@{realm.name}")
    print(f"realm {realm.name} {'created' if created else 'already exists'} in {realm.files.root}")
    print(f"  HTTP service: {realm.http_principal} -> {realm.files.http_keytab}")
    print(f"  libvirt client: {realm.appliance_principal} -> {realm.files.appliance_keytab}")
    print(f"  first admin: {FIRST_ADMIN}@{realm.name} -> {realm.files.admin_keytab}")
    print(f"  {FIRST_ADMIN}@{realm.name} {'granted' if granted else 'already has'} the super_admin role")
    print(f"  get a ticket: KRB5_CONFIG={realm.files.krb5_conf} kinit -k -t {realm.files.admin_keytab} {FIRST_ADMIN}")
    return 0


def start(args: argparse.Namespace) -> int:
    realm = _realm(args)
    pid = realm.start()
    print(f"KDC for {realm.name} listening on {realm.spec.kdc} (pid {pid})")
    return 0


def stop(args: argparse.Namespace) -> int:
    realm = _realm(args)
    print("KDC stopped" if realm.stop() else "KDC was not running")
    return 0


def status(args: argparse.Namespace) -> int:
    """What the realm is and whether drover can use it: every check, and for each failed one the fix."""
    realm = _realm(args)
    print(f"realm:      {realm.name} ({realm.mode})")
    if realm.mode is KerberosMode.EMBEDDED:
        print(f"pid:        {realm.pid() or '-'}")
    else:
        print(f"admin:      {realm.admin_principal}@{realm.name} (keytab {realm.admin_keytab or '-'})")
    print(f"krb5.conf:  {realm.env()['KRB5_CONFIG']}")
    print(f"HTTP:       {realm.http_principal}")
    print(f"appliance:  {realm.appliance_principal}")
    checks = health.check(realm)
    _print_checks(checks)
    return 0 if not health.failures(checks) else 1


def _print_checks(checks: list[health.Check]) -> None:
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            print(f"     {'':<{width}}  fix: {c.fix}")


def check(args: argparse.Namespace) -> int:
    with client_for(load_config(args)) as api:
        answer = api.post("/api/v1/realm/check")
    print(f"realm:      {answer['realm']} ({answer['mode']}), checked by the appliance")
    _print_checks([health.Check(**c) for c in answer["checks"]])
    return 0 if answer["ok"] else 1


def add_principal(args: argparse.Namespace) -> int:
    realm = _realm(args)
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass()
    realm.kadmin().add(args.principal, password)
    print(f"principal {realm.kadmin().qualify(args.principal)} ready")
    return 0


def keytab(args: argparse.Namespace) -> int:
    realm = _realm(args)
    path = realm.kadmin().keytab([args.principal], args.path.resolve())
    print(f"wrote {path}")
    return 0


def list_principals(args: argparse.Namespace) -> int:
    for name in _realm(args).kadmin().principals():
        print(name)
    return 0
