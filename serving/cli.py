"""``byol serve``: check the bundle, then become ``bentoml serve serving.service:ByolEmbed`` (foreground).

The process execs BentoML rather than wrapping it, so SIGTERM / SIGINT reach BentoML's own handler directly and the
server shuts down cleanly with its worker. The bundle is checked first so a missing or corrupt one ends with one
line (``byol serve: error: ...``) instead of a BentoML traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from serving.paths import use_store

log = logging.getLogger(__name__)
SERVICE = "serving.service:ByolEmbed"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol serve", description="start the byol-embed HTTP API (BentoML)")
    p.add_argument("--model", help="bundle tag or version (default: $BYOL_MODEL_TAG, the promoted one, or latest)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--token", help="admin bearer token for /index/* and /admin/* (default: $BYOL_ADMIN_TOKEN)")
    return p


def serve_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1-65535, got {args.port}")
    use_store()
    env = dict(os.environ)
    if args.model:
        env["BYOL_MODEL_TAG"] = args.model
    if args.token:
        env["BYOL_ADMIN_TOKEN"] = args.token
    from serving.runtime import check_bundle, resolve_tag

    os.environ.update(env)
    tag = resolve_tag()
    version = check_bundle(tag)
    if not env.get("BYOL_ADMIN_TOKEN"):
        print("byol serve: no admin token (--token / BYOL_ADMIN_TOKEN): /index/add, /index/remove and "
              "/admin/reload are disabled", file=sys.stderr)
    print(f"byol serve: serving {version} on http://{args.host}:{args.port}", file=sys.stderr)
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", args.host, "--port", str(args.port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)
    return 1  # not reached
