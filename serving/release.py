"""Which bundle version is served: ``$BYOL_HOME/release.json`` = ``{"current": v, "history": [older, ...]}``.

Promotion and rollback only move this pointer (atomically); bundles, indexes and probes are immutable per
version, so the served pair (encoder + its index) can never be half-replaced. A running server picks the change
up through ``POST /admin/reload`` (``--url``), which swaps encoder + index + probe together.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from datetime import UTC, datetime

from serving.contract.atomic import atomic_write_json
from serving.paths import index_dir, release_file

log = logging.getLogger(__name__)
HISTORY_LIMIT = 20


class ReleaseError(ValueError):
    """Promotion or rollback is impossible; the message says why."""


def read_release() -> dict:
    path = release_file()
    if not path.is_file():
        return {"current": None, "history": []}
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path} is corrupt ({exc}); fix or delete it, then promote a version") from None
    obj.setdefault("history", [])
    return obj


def current_version() -> str | None:
    return read_release().get("current")


def _check_promotable(version: str) -> None:
    from serving.contract.bundle import read_bundle
    from serving.store import bundle_path

    read_bundle(bundle_path(version))  # raises BundleError with a clear line when missing/corrupt
    if not index_dir(version).exists():
        log.warning("version %s has no index yet (%s): /search will answer 409 until one is built",
                    version, index_dir(version))


def promote(version: str, reason: str = "") -> dict:
    """Make ``version`` current; the previous current goes to the front of the history."""
    _check_promotable(version)
    rel = read_release()
    prev = rel.get("current")
    if prev == version:
        return rel
    history = [v for v in rel["history"] if v != version]
    if prev:
        history.insert(0, prev)
    rel = {
        "current": version,
        "history": history[:HISTORY_LIMIT],
        "promoted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reason": reason,
    }
    atomic_write_json(release_file(), rel)
    log.info("promoted %s (previous: %s)", version, prev)
    return rel


def rollback() -> dict:
    """Go back to the version served before the current one."""
    rel = read_release()
    if not rel["history"]:
        raise ReleaseError("nothing to roll back to: no earlier version was ever promoted")
    target, rest = rel["history"][0], rel["history"][1:]
    _check_promotable(target)
    rel = {
        "current": target,
        "history": rest,
        "promoted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reason": f"rollback from {rel.get('current')}",
    }
    atomic_write_json(release_file(), rel)
    return rel


def _reload(url: str | None, token: str | None, version: str) -> None:
    if not url:
        return
    from clients.client import EmbeddingClient

    info = EmbeddingClient(url, token=token or os.environ.get("BYOL_ADMIN_TOKEN")).reload(version)
    print(f"server at {url} now serves {info.get('version', version)}")


def _parser(prog: str, with_version: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    if with_version:
        p.add_argument("version", help="bundle version (or byol-encoder:<version>)")
    p.add_argument("--url", default=None, help="a running server to reload (POST /admin/reload)")
    p.add_argument("--token", default=None, help="admin token (default: $BYOL_ADMIN_TOKEN)")
    return p


def promote_main(argv: list[str]) -> int:
    args = _parser("byol promote", True).parse_args(argv)
    version = args.version.split(":", 1)[-1]
    rel = promote(version, reason="byol promote")
    print(f"current: {rel['current']}  (rollback target: {(rel['history'] or [None])[0]})")
    _reload(args.url, args.token, rel["current"])
    return 0


def rollback_main(argv: list[str]) -> int:
    args = _parser("byol rollback", False).parse_args(argv)
    rel = rollback()
    print(f"rolled back: current is now {rel['current']}")
    _reload(args.url, args.token, rel["current"])
    return 0
