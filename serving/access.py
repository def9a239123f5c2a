"""Who may call: the admin token (for writes and reloads) and the Host names the service answers to.

* **The admin token** comes from ``BYOL_ADMIN_TOKEN`` or, better, from the file ``BYOL_ADMIN_TOKEN_FILE`` names (an
  environment variable or a ``--token`` argument is readable by other users of the box through ``ps`` and
  ``/proc``; a file with mode 600 is not). Fewer than :data:`MIN_TOKEN_CHARS` characters is refused at start: a
  short token is guessed by a client that may try as often as it likes.
* **Trusted hosts**: a page on another origin can reach a server bound to localhost through DNS rebinding (its
  name resolves to 127.0.0.1 after the page loads), and ``/ui`` holds the admin token in the browser. The service
  answers only requests whose ``Host`` header names it: ``BYOL_TRUSTED_HOSTS`` (comma-separated, ``*.example.com``
  patterns; ``*`` allows any, by explicit choice only), else the host ``BENTOML_HOST`` binds, else the loopback
  names (the service binds 127.0.0.1 unless told otherwise). A server bound to every interface (``--host
  0.0.0.0``) must name the hosts its clients use.
"""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_ENV, TOKEN_FILE_ENV, HOSTS_ENV = "BYOL_ADMIN_TOKEN", "BYOL_ADMIN_TOKEN_FILE", "BYOL_TRUSTED_HOSTS"
MIN_TOKEN_CHARS = 16
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "[::]", "")


class AccessError(ValueError):
    """The access settings cannot be used; the message names the variable (never the token)."""


def admin_token(env=None) -> str | None:
    """The admin token (``None``: admin endpoints are off), or :class:`AccessError` naming what is wrong."""
    env = os.environ if env is None else env
    given, path = env.get(TOKEN_ENV, "").strip(), env.get(TOKEN_FILE_ENV, "").strip()
    if given and path:
        raise AccessError(f"both {TOKEN_ENV} and {TOKEN_FILE_ENV} are set: set one")
    if path:
        try:
            given = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessError(f"{TOKEN_FILE_ENV}: cannot read the token file ({getattr(exc, 'strerror', None) or exc})"
                              ) from None
        if not given:
            raise AccessError(f"{TOKEN_FILE_ENV}: the token file is empty")
    if given and len(given) < MIN_TOKEN_CHARS:
        where = TOKEN_FILE_ENV if path else TOKEN_ENV
        raise AccessError(f"the admin token ({where}) has {len(given)} characters; use at least {MIN_TOKEN_CHARS} "
                          "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    if any(c.isspace() or not c.isprintable() for c in given):
        raise AccessError(f"the admin token ({TOKEN_FILE_ENV if path else TOKEN_ENV}) holds spaces or control "
                          "characters; use printable characters only")
    return given or None


def trusted_hosts(env=None) -> list[str]:
    """The Host names the service answers to (Starlette ``TrustedHostMiddleware`` patterns)."""
    env = os.environ if env is None else env
    listed = [h.strip() for h in env.get(HOSTS_ENV, "").split(",") if h.strip()]
    if listed:
        return listed
    bound = env.get("BENTOML_HOST", "").strip()
    if bound and bound not in WILDCARD_BINDS and bound not in LOOPBACK:
        return [bound, *LOOPBACK]
    return list(LOOPBACK)


def host_refusal(host: str) -> str:
    """The 400 message for a request whose ``Host`` header is not trusted."""
    return (f"Host {host[:100]!r} is not one this server answers to: add it to {HOSTS_ENV} (comma-separated; "
            f"'*' allows any)")


class TrustedHosts:
    """Starlette's ``TrustedHostMiddleware`` decides; a refusal is answered like every other 4xx of the service (JSON
    ``[{"error": ...}]`` naming the Host and the variable) instead of its plain "Invalid host header"."""

    def __init__(self, app, allowed_hosts: list[str] | None = None) -> None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        self.app = app
        self.hosts = allowed_hosts or trusted_hosts()
        self.check = TrustedHostMiddleware(_trusted, allowed_hosts=self.hosts, www_redirect=False)
        self.seen: dict[bytes, bool] = {}  # Host headers already judged (at most SEEN of them)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.check.allow_any:
            return await self.app(scope, receive, send)
        host = next((v for k, v in scope.get("headers") or [] if k == b"host"), b"")
        if self.seen.get(host):  # the same few Host headers come again and again: judged once each
            return await self.app(scope, receive, send)
        scope = {**scope}
        await self.check(scope, receive, _discard)
        if scope.pop(_TRUSTED, False):
            if len(self.seen) < SEEN:
                self.seen[host] = True
            return await self.app(scope, receive, send)
        from serving.upload_guard import reply

        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        await reply(send, 400, host_refusal(host))


_TRUSTED = "byol.trusted_host"
SEEN = 64  # trusted Host headers remembered; a refused one is judged again each time (it is refused anyway)


async def _trusted(scope, receive, send) -> None:
    scope[_TRUSTED] = True


async def _discard(message) -> None:
    """Starlette's own refusal is dropped: :class:`TrustedHosts` answers instead."""
