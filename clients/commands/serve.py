"""``byol serve``: start the BentoML API in the foreground (``clients.workflows.serve``)."""

from __future__ import annotations

import argparse

from clients.workflows.serve import ServeConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol serve", description="start the byol-embed HTTP API (BentoML)")
    p.add_argument("--model", help="bundle tag or version (default: $BYOL_MODEL_TAG, the promoted one, or latest)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--token-file", help="file holding the admin bearer token for /index/* and /admin/* (default: "
                   "$BYOL_ADMIN_TOKEN_FILE, else $BYOL_ADMIN_TOKEN); at least 16 characters")
    p.add_argument("--token", help="the admin token itself (visible to every user of this box in ps: prefer "
                   "--token-file)")
    return p


def main(argv: list[str]) -> int:
    from clients.workflows.serve import serve

    return serve(ServeConfig(**vars(parser().parse_args(argv))))
