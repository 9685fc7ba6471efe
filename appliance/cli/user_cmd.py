"""`drover user add|list|remove|quota|disable|enable|sessions`: who may use the appliance with which role (global
or in a hardware pool) and within which quota, and their web UI sessions, straight in the DB."""

from __future__ import annotations

import argparse
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from appliance import quotas, websessions
from appliance.cli.context import load_config
from appliance.cli.db_cmd import open_database
from appliance.db.access import find_pool, grant, grant_in_pool, revoke
from appliance.db.engine import session_scope
from appliance.db.models.users import Role, User
from appliance.errors import NotFound, UsageError

# name, optional /instance, optional @REALM; no blanks, nothing Kerberos itself would reject.
_PRINCIPAL = re.compile(r"[^\s@/]+(/[^\s@/]+)?(@[^\s@/]+)?")


def register(sub: Any) -> None:
    p = sub.add_parser("user", help="users (Kerberos principals) and their global roles")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", help="add a user, or grant an existing user another role")
    add.add_argument("principal", help="user@REALM (the configured realm is added when omitted)")
    add.add_argument("--role", type=Role, choices=list(Role), default=Role.USER, help="global role (default: user)")
    add.add_argument("--pool", metavar="POOL", help="grant the role in this hardware pool (and its sub-pools) only")
    add.set_defaults(func=add_user)
    quota = verbs.add_parser("quota", help="set a user's quota in a hardware pool (a limit not given: unlimited)")
    quota.add_argument("principal")
    quota.add_argument("--pool", default="default", help="hardware pool name or id (default: default)")
    quota.add_argument("--vms", type=int, metavar="N")
    quota.add_argument("--vcpus", type=int, metavar="N", help="vCPUs of running VMs")
    quota.add_argument("--memory", type=int, metavar="MIB", help="memory of running VMs")
    quota.add_argument("--disk", type=int, metavar="BYTES", help="capacity of the VMs' volumes")
    quota.set_defaults(func=set_quota)
    revoke = verbs.add_parser("revoke", help="take a role from a user (globally, or in one hardware pool)")
    revoke.add_argument("principal")
    revoke.add_argument("--role", type=Role, choices=list(Role), required=True)
    revoke.add_argument("--pool", metavar="POOL", help="the hardware pool the role was granted in")
    revoke.set_defaults(func=revoke_role)
    verbs.add_parser("list", help="list users and their global roles").set_defaults(func=list_users)
    remove = verbs.add_parser("remove", help="remove a user with all their roles and quotas")
    remove.add_argument("principal")
    remove.set_defaults(func=remove_user)
    for verb, text in (("disable", "disable a user: no role counts any more, and every web UI session of theirs ends"),
                       ("enable", "enable a disabled user again")):  # fmt: skip
        d = verbs.add_parser(verb, help=text)
        d.add_argument("principal")
        d.set_defaults(func=set_disabled, disabled=verb == "disable")
    sessions = verbs.add_parser("sessions", help="a user's web UI sessions; --revoke ID or --all ends them")
    sessions.add_argument("principal")
    end = sessions.add_mutually_exclusive_group()
    end.add_argument("--revoke", type=int, metavar="ID", help="end this session (its cookie stops working at once)")
    end.add_argument("--all", action="store_true", help="end every session of the user")
    sessions.set_defaults(func=user_sessions)


def qualify(principal: str, realm: str) -> str:
    """`principal` with the realm added when it has none; UsageError when it cannot be a principal."""
    principal = principal.strip()
    if not _PRINCIPAL.fullmatch(principal):
        raise UsageError(f"{principal!r} is not a Kerberos principal", "use name@REALM, e.g. alice@" + realm)
    return principal if "@" in principal else f"{principal}@{realm}"


def add_user(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    principal = qualify(args.principal, cfg.kerberos.realm)
    role: Role = args.role
    if args.pool:
        with open_database(args) as engine, session_scope(engine) as session:
            _, created = grant_in_pool(session, principal, role, args.pool)
        print(f"{'added' if created else 'updated'} user {principal} with role {role} in hardware pool {args.pool}")
        return 0
    with open_database(args) as engine, session_scope(engine) as session:
        _, created = grant(session, principal, role)
    print(f"{'added' if created else 'updated'} user {principal} with global role {role}")
    return 0


def revoke_role(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    principal = qualify(args.principal, cfg.kerberos.realm)
    with open_database(args) as engine, session_scope(engine) as session:
        pool_id = find_pool(session, args.pool).id if args.pool else None
        revoke(session, principal, args.role, pool_id)
    print(f"revoked {args.role} from {principal}" + (f" in hardware pool {args.pool}" if args.pool else " (global)"))
    return 0


def set_quota(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    principal = qualify(args.principal, cfg.kerberos.realm)
    limits = {"max_vms": args.vms, "max_vcpus": args.vcpus, "max_memory_mib": args.memory, "max_disk_bytes": args.disk}
    pool: str | int = int(args.pool) if args.pool.isdigit() else args.pool
    with open_database(args) as engine, session_scope(engine) as session:
        shown = quotas.describe(quotas.set_quota(session, principal, pool, limits))
    text = ", ".join(f"{k.removeprefix('max_')} {v if v is not None else 'unlimited'}" for k, v in shown.items()
                     if k.startswith("max_"))  # fmt: skip
    print(f"quota of {principal} in hardware pool {shown['pool']}: {text}")
    return 0


def list_users(args: argparse.Namespace) -> int:
    with open_database(args) as engine, session_scope(engine) as session:
        users = session.scalars(
            select(User).options(selectinload(User.permissions)).order_by(User.principal)
        ).all()
        rows = []
        for user in users:
            roles = sorted({p.role for p in user.permissions if p.is_global}, key=lambda r: r.rank)
            scoped = sum(1 for p in user.permissions if not p.is_global)
            text = ",".join(roles) or "-"
            if scoped:
                text += f" (+{scoped} pool grant{'s' if scoped > 1 else ''})"
            if user.is_disabled:
                text += " [disabled]"
            rows.append((user.principal, text))
    width = max([len("PRINCIPAL"), *(len(r[0]) for r in rows)])
    print(f"{'PRINCIPAL':<{width}}  ROLES")
    for principal, text in rows:
        print(f"{principal:<{width}}  {text}")
    return 0


def remove_user(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    principal = qualify(args.principal, cfg.kerberos.realm)
    with open_database(args) as engine, session_scope(engine) as session:
        user = session.scalars(select(User).where(User.principal == principal)).one_or_none()
        if user is None:
            raise NotFound(f"no user {principal}", "see `drover user list`")
        session.delete(user)
        ended = websessions.revoke(session, principal)
    print(f"removed user {principal}" + (f"; ended {ended} web UI session(s)" if ended else ""))
    return 0


def set_disabled(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    principal = qualify(args.principal, cfg.kerberos.realm)
    with open_database(args) as engine, session_scope(engine) as session:
        ended = len(websessions.of(session, principal)) if args.disabled else 0
        websessions.set_disabled(session, principal, args.disabled)
    if args.disabled:
        print(f"disabled user {principal}; ended {ended} web UI session(s)")
    else:
        print(f"enabled user {principal}")
    return 0


def user_sessions(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    principal = qualify(args.principal, cfg.kerberos.realm)
    if args.revoke is not None and args.revoke < 1:
        raise UsageError(f"--revoke: a session id from `drover user sessions {principal}`, not {args.revoke}")
    with open_database(args) as engine, session_scope(engine) as session:
        if args.revoke is not None or args.all:
            ended = websessions.revoke(session, principal, args.revoke)
            print(f"ended {ended} web UI session(s) of {principal}")
            return 0
        rows = [websessions.describe(w) for w in websessions.of(session, principal)]
    if not rows:
        print(f"{principal} has no live web UI session")
        return 0
    print(f"{'ID':>6}  {'SIGNED IN':<25}  {'HOW':<8}  {'LAST SEEN':<25}  {'EXPIRES':<25}  FROM")
    for r in rows:
        print(f"{r['id']:>6}  {r['created_at']!s:<25.25}  {r['method']!s:<8}  {r['last_seen_at']!s:<25.25}  "
              f"{r['expires_at']!s:<25.25}  {r['source']}")  # fmt: skip
    return 0
