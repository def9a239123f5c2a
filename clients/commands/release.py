"""``byol promote VERSION`` / ``byol rollback``: move the served-version pointer, optionally reload a server."""

from __future__ import annotations

import argparse

from clients import tables


def parser(prog: str, with_version: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    if with_version:
        p.add_argument("version", help="bundle version (or byol-encoder:<version>)")
    p.add_argument("--url", default=None, help="a running server to reload (POST /admin/reload)")
    p.add_argument("--token", default=None, help="admin token (default: $BYOL_ADMIN_TOKEN)")
    return p


def promote_main(argv: list[str]) -> int:
    args = parser("byol promote", True).parse_args(argv)
    from clients.workflows.release import promote

    print(tables.release(promote(args.version, args.url, args.token), "promote"))
    return 0


def rollback_main(argv: list[str]) -> int:
    args = parser("byol rollback", False).parse_args(argv)
    from clients.workflows.release import rollback

    print(tables.release(rollback(args.url, args.token), "rollback"))
    return 0
