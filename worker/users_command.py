"""`lumbarnode users ...` and `lumbarnode audit`: the admin page's users and its audit trail,
from the node's machine (where the first admin is made). Each change leaves an audit row
naming `cli:<os user>`."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path

from db.access import ROLES


class UsageError(Exception):
    pass


def _actor():
    from worker.admin.users import Actor

    return Actor(f"cli:{getpass.getuser()}", "cli")


def _password(args: argparse.Namespace, username: str) -> str:
    """From --password-file, --password-stdin, or asked twice at the terminal (never an argument:
    it would be in the shell's history and in `ps`)."""
    if args.password_file:
        try:
            return Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--password-file {args.password_file}: {exc.strerror}") from None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask the password at: use --password-file or --password-stdin")
    first = getpass.getpass(f"password for {username}: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


def cmd_users(args: argparse.Namespace, open_store: Callable, settings) -> int:
    from db.access import AccessStore
    from worker.admin import users

    access = AccessStore(open_store(settings))
    actor = _actor()
    try:
        if args.action == "list":
            found = access.users()
            if args.json:
                print(json.dumps([u.as_dict() for u in found], indent=2))
                return 0
            print(f"{'USER':<24} {'ROLE':<9} {'SIGNS IN WITH':<14} {'STATE':<9} LAST SIGN-IN (UTC)")
            for u in found:
                state = "disabled" if u.disabled else "locked" if u.locked_until else "active"
                last = f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else ""
                print(f"{u.username:<24} {u.role:<9} {'password' if u.source == 'local' else 'provider':<14} "
                      f"{state:<9} {last}")
            return 0
        if args.action == "add":
            users.add(access, args.name, args.role, _password(args, args.name), actor)
            print(f"user {args.name} added ({args.role})")
        elif args.action == "role":
            users.set_role(access, args.name, args.role, actor)
            print(f"user {args.name}: role {args.role}")
        elif args.action == "passwd":
            users.set_password(access, args.name, _password(args, args.name), actor)
            print(f"user {args.name}: password set, browser sessions ended")
        elif args.action in ("disable", "enable"):
            users.set_disabled(access, args.name, args.action == "disable", actor)
            print(f"user {args.name} {args.action}d")
        elif args.action == "signout":
            print(f"user {args.name}: {users.sign_out(access, args.name, actor)} sessions and tokens ended")
        elif args.action == "token":
            days = args.days if args.days is not None else settings.admin_token_days
            secret = users.issue_token(access, args.name, args.label, days, actor)
            print(secret)
            print(f"an API token for {args.name} ({args.label or 'unnamed'}, {days:g} days): send it as "
                  "'Authorization: Bearer TOKEN'; it is shown only now", file=sys.stderr)
    except users.UserError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_audit(args: argparse.Namespace, open_store: Callable, settings) -> int:
    from db.access import AccessStore

    access = AccessStore(open_store(settings))
    rows = access.audit_entries(limit=args.limit, since=args.since, actor=args.actor, action=args.action,
                                job_id=args.job)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    for r in rows:
        job = f"job {r.job_id}" if r.job_id else ""
        print(f"{r.at:%Y-%m-%d %H:%M:%S}  {r.actor:<20} {r.action:<20} {r.outcome:<7} {job:<9} {r.target:<16} "
              f"{r.address:<15} {r.detail}")
    return 0


def add_parsers(sub, since: Callable, positive: Callable) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    p_users = sub.add_parser("users", help="who may use the admin page: users list | add | role | passwd | disable | "
                                           "enable | signout | token")
    actions = p_users.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", help="every user, role and state")
    q.add_argument("--json", action="store_true")

    def password_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--password-file", help="read the password from this file (else asked at the terminal)")
        parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    q = actions.add_parser("add", help="a new local user with a password")
    q.add_argument("name")
    q.add_argument("--role", choices=ROLES, required=True,
                   help="viewer: sees jobs; operator: also retries and resends; admin: also manages users; "
                        "sender: may only send studies by STOW-RS")
    password_options(q)
    q = actions.add_parser("role", help="change a user's role")
    q.add_argument("name")
    q.add_argument("role", choices=ROLES)
    q = actions.add_parser("passwd", help="set a user's password (and unlock the account)")
    q.add_argument("name")
    password_options(q)
    for name, text in (("disable", "stop a user signing in (ends their sessions and tokens)"),
                       ("enable", "let a disabled user sign in again"),
                       ("signout", "end every session and API token of a user")):
        actions.add_parser(name, help=text).add_argument("name")
    q = actions.add_parser("token", help="an API token for a user (Authorization: Bearer), printed once")
    q.add_argument("name")
    q.add_argument("--label", default="", help="what it is for, e.g. the monitoring script's name")
    q.add_argument("--days", type=float, default=None, help="lifetime (default ADMIN_TOKEN_DAYS: 90)")

    p_audit = sub.add_parser("audit", help="the audit trail: sign-ins, job views, retries, user changes, refused "
                                           "associations (newest first)")
    p_audit.add_argument("--since", type=since, help="ISO date/time (UTC) or a duration back from now: 30m, 2h, 7d")
    p_audit.add_argument("--actor", help="a user name or AE title")
    p_audit.add_argument("--action", help="login, logout, view_job, retry, resend, user_added, association_rejected ...")
    p_audit.add_argument("--job", type=int, help="one job's entries")
    p_audit.add_argument("--limit", type=positive, default=200)
    p_audit.add_argument("--json", action="store_true", help="as JSON (the export)")
    return p_users, p_audit
