"""Moving the served-version pointer and telling a running server: ``byol promote`` / ``byol rollback``.

The pointer itself is ``serving.release``; the reload is an HTTP call (``POST /admin/reload``) through the client.
"""

from __future__ import annotations

import os

from clients.client import EmbeddingClient
from serving import release


def reload(url: str | None, token: str | None, version: str) -> str | None:
    """Ask the server at ``url`` (if any) to serve ``version`` now; returns the version it reports."""
    if not url:
        return None
    with EmbeddingClient(url, token=token or os.environ.get("BYOL_ADMIN_TOKEN")) as client:
        return client.reload(version).get("version", version)


def promote(version: str, url: str | None = None, token: str | None = None, reason: str = "byol promote") -> dict:
    """Make ``version`` (a version or ``byol-encoder:<version>``) current; reload ``url`` when given."""
    rel = release.promote(version.split(":", 1)[-1], reason=reason)
    return {**rel, "reloaded": reload(url, token, rel["current"])}


def rollback(url: str | None = None, token: str | None = None) -> dict:
    """Go back to the version served before the current one; reload ``url`` when given."""
    rel = release.rollback()
    return {**rel, "reloaded": reload(url, token, rel["current"])}
