"""Which route of the served app a request's path names, asked of the app's own router (Starlette's matching).

Two users, both before anything else runs: BentoML's request metrics (:mod:`serving.metrics`) label a request by
its route template, and a path the service does not route by one constant, :data:`UNROUTED` (labelled by its raw
path, every distinct unknown path would add a set of Prometheus series, without bound); the edge
(:mod:`serving.upload_guard`) refuses a POST (or PUT, PATCH, DELETE...) to an unknown path with 404, or to a known
path that does not take that method with 405, before reading its body.

Why the router and not a list of paths: the routes are BentoML's (``/healthz``, ``/readyz``, ``/livez``,
``/metrics``, the OpenAPI page at ``/``, ``/docs.json``, ``/schema.json`` and its static files), the API's and
:mod:`serving.web`'s; Starlette puts the app in every request's scope (``scope["app"]``) before any middleware runs,
so its router is the one list that cannot drift. Matching walks ~20 compiled patterns: a few microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.routing import Match, Mount

UNROUTED = "/{unrouted}"  # the one label of every path the service does not route
ITEM_ROUTE = re.compile(r"^/items/[^/]*/thumbnail$")
ITEM_LABEL = "/items/{id}/thumbnail"


@dataclass(frozen=True)
class Matched:
    match: Match  # FULL: routed; PARTIAL: the path is routed but not for this method; NONE: not routed
    label: str  # the route's template (its path for a fixed route), UNROUTED for NONE
    methods: frozenset[str] = frozenset()  # what the matched route takes (empty: any)


NOTHING = Matched(Match.NONE, UNROUTED)


CACHED = 512  # (method, path) answers kept: the fixed routes a server sees again and again, and no more
_CACHE: dict[tuple[int, str, str], Matched] = {}


def match_scope(scope: dict) -> Matched:
    """How the app in ``scope`` (``scope["app"]``, set by Starlette) routes this request; no app in the scope (a
    bare ASGI app in a unit test): nothing is routed. Answers for the first :data:`CACHED` (method, path) pairs
    are kept (every request is labelled: ~4 us of matching saved on each); a path beyond them is matched anew, so
    a scanner's endless paths cost no memory."""
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", None)
    if routes is None:
        return NOTHING
    key = (id(routes), scope.get("method", ""), scope.get("path", ""))
    matched = _CACHE.get(key)
    if matched is None:
        matched = match_routes(routes, scope)
        if len(_CACHE) < CACHED:
            _CACHE[key] = matched
    return matched


def match_routes(routes, scope: dict) -> Matched:
    """The first full match in ``routes`` (in order, as Starlette's router tries them), else the first partial."""
    partial = None
    for route in routes:
        try:
            found, child = route.matches(scope)
        except (KeyError, ValueError):  # a param convertor refusing the value: not this route
            continue
        if found is Match.NONE:
            continue
        matched = _described(route, found, {**scope, **child})
        if matched.match is Match.FULL:
            return matched
        if matched.match is Match.PARTIAL and partial is None:
            partial = matched
    return partial or NOTHING


def _described(route, found: Match, scope: dict) -> Matched:
    if isinstance(route, Mount):
        inner = getattr(route.app, "routes", None)
        if inner is None:  # a mounted ASGI app (static files): any path below it
            return Matched(found, route.path + "/{path}")
        below = match_routes(inner, scope)
        return Matched(below.match, route.path + below.label if below.match is not Match.NONE else UNROUTED,
                       below.methods)
    path = getattr(route, "path", None)
    if path is None:
        return Matched(found, UNROUTED)
    return Matched(found, ITEM_LABEL if ITEM_ROUTE.match(path) else path, frozenset(getattr(route, "methods",
                                                                                            None) or ()))
