"""Which bundle version is served: ``$BYOL_HOME/release.json`` = ``{"current": v, "history": [older, ...]}``.

Promotion and rollback only move this pointer (atomically); bundles, indexes and probes are immutable per
version, so the served pair (encoder + its index) can never be half-replaced. A running server picks the change
up through ``POST /admin/reload`` (``byol promote --url``), which swaps encoder + index + probe together.
This module is the pointer alone: the commands that move it and reload a server live in ``clients/``.
"""

from __future__ import annotations

import json
import logging

from index.durable import DurableIndex
from serving.contract.atomic import atomic_write_json, now_iso
from serving.paths import index_dir, release_file

log = logging.getLogger(__name__)
HISTORY_LIMIT = 20


class ReleaseError(ValueError):
    """Promotion or rollback is impossible; the message says why."""


def read_release() -> dict:
    """``{"current", "history", ...}``; a missing file means nothing was promoted, a corrupt one raises."""
    path = release_file()
    if not path.is_file():
        return {"current": None, "history": []}
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path} is corrupt ({exc}); fix or delete it, then promote a version") from None
    if not isinstance(obj, dict):
        raise ReleaseError(f"{path} is not a JSON object with a 'current' version; fix or delete it")
    obj.setdefault("history", [])
    return obj


def current_version() -> str | None:
    """The promoted version, or ``None`` when nothing was ever promoted."""
    return read_release().get("current")


def served_tag() -> str:
    """What a server loads by default: the promoted version, else ``latest`` (the newest bundle in the store)."""
    return current_version() or "latest"


def _check_promotable(version: str) -> None:
    from serving.contract.bundle import read_bundle
    from serving.store import bundle_path

    read_bundle(bundle_path(version))  # raises BundleError with a clear line when missing/corrupt
    if not DurableIndex.exists(index_dir(version)):
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
        "promoted_at": now_iso(),
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
        "promoted_at": now_iso(),
        "reason": f"rollback from {rel.get('current')}",
    }
    atomic_write_json(release_file(), rel)
    return rel
