"""``byol serve``: check the bundle, then become ``bentoml serve serving.service:ByolEmbed`` (foreground).

The process execs BentoML rather than wrapping it, so SIGTERM / SIGINT reach BentoML's own handler directly and the
server shuts down cleanly with its processes (the embedding workers and the index service). The bundle and the
settings are checked first so a missing or corrupt bundle, a malformed setting or a short token ends with one line
(``byol serve: error: ...``) instead of a BentoML traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)
SERVICE = "serving.service:ByolEmbed"


@dataclass
class ServeConfig:
    model: str | None = None  # bundle tag or version (default: $BYOL_MODEL_TAG, the promoted one, or latest)
    host: str = "127.0.0.1"
    port: int = 3000
    token: str | None = None  # admin bearer token (visible in ps: prefer token_file)
    token_file: str | None = None  # file holding it (default: $BYOL_ADMIN_TOKEN_FILE, else $BYOL_ADMIN_TOKEN)


def serve(cfg: ServeConfig) -> int:
    """Check what would be served, then exec BentoML (does not return unless the exec fails)."""
    from serving.access import HOSTS_ENV, WILDCARD_BINDS, admin_token
    from serving.following import follow_interval
    from serving.paths import use_store
    from serving.runtime import check_bundle, embed_workers, ort_threads, resolve_tag

    if not 0 < cfg.port < 65536:
        raise ValueError(f"--port must be 1-65535, got {cfg.port}")
    use_store()
    if cfg.model:
        os.environ["BYOL_MODEL_TAG"] = cfg.model
    if cfg.token:
        log.warning("byol serve: --token is visible to every user of this machine (ps); prefer --token-file")
        os.environ["BYOL_ADMIN_TOKEN"] = cfg.token
    if cfg.token_file:
        os.environ["BYOL_ADMIN_TOKEN_FILE"] = cfg.token_file
    version = check_bundle(resolve_tag())
    workers, _, _ = embed_workers(), ort_threads(), follow_interval()  # a malformed setting: one line, here
    if not admin_token():  # a short or unreadable token: one line, here
        log.warning("byol serve: no admin token (--token-file / BYOL_ADMIN_TOKEN_FILE / BYOL_ADMIN_TOKEN): "
                    "/index/add, /index/remove and /admin/reload are disabled")
    os.environ["BENTOML_HOST"] = cfg.host  # the workers read it: the Host names they answer to (serving.access)
    if cfg.host in WILDCARD_BINDS and not os.environ.get(HOSTS_ENV):
        log.warning("byol serve: bound to every interface, but only requests naming this machine as 127.0.0.1 / "
                    "localhost are answered: set %s to the host names clients use ('*' for any)", HOSTS_ENV)
    log.info("byol serve: serving %s on http://%s:%d (%d embedding worker(s) + the index service)", version,
             cfg.host, cfg.port, workers)
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", cfg.host, "--port", str(cfg.port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, dict(os.environ))
    return 1  # not reached
