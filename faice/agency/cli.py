"""``faice agency serve`` and ``faice agency user add``."""

from __future__ import annotations

import getpass
import sys

from faice.errors import UsageError


def run_agency_command(name: str, args) -> int:
    if name == "serve":
        from faice.agency.server import serve

        return serve(args)
    if name == "user-add":
        return _user_add(args)
    raise UsageError(f"unknown agency action {name!r}")


def _user_add(args) -> int:
    from faice.agency.auth import add_user
    from faice.agency.db import Database

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"Password for {args.name}: ")
        if password != getpass.getpass("Repeat it: "):
            raise UsageError("the passwords differ")
    if not password:
        raise UsageError("the password must not be empty")
    db = Database(args.db)
    try:
        add_user(db, args.name, password, admin=args.admin)
    finally:
        db.close()
    print(f"user {args.name} saved{' (admin)' if args.admin else ''}", file=sys.stderr)
    return 0
