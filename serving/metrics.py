"""The project's own metrics on BentoML's ``GET /metrics`` (Prometheus text), beside BentoML's request metrics.

=====================================  =========  ==============================================================
name                                   type       what
=====================================  =========  ==============================================================
byol_served_version_info{version}      gauge      1 for the encoder version served now (0: versions served before)
byol_index_size                        gauge      items in the served version's index (0 when it has none)
byol_micro_batch_size                  histogram  images per ONNX Runtime call made by the micro-batcher
byol_embed_latency_seconds             histogram  one request's images, from submit to vectors (queue + model)
byol_search_latency_seconds{endpoint}  histogram  one index search call (``/search_batch``: one call for all)
=====================================  =========  ==============================================================

Why ``prometheus_client`` directly and nothing created at import: BentoML 1.4 deprecates ``bentoml.metrics`` for
``prometheus_client`` and answers ``/metrics`` from prometheus_client's multiprocess files (``bentoml serve`` gives
the worker ``PROMETHEUS_MULTIPROC_DIR``). The metrics are made on first use, in the worker, so they always land in
those files; the gauges keep the value last set by a live worker (``livemostrecent``). Outside a server (a unit
test) they go to prometheus_client's default registry instead.

BentoML's own request metrics label each request by its raw path, so ``/items/<id>/thumbnail`` would make a set of
series per item id (a grid of thumbnails: thousands of them, without bound), and every distinct path nobody routes
(a scanner's ``GET /wp-login.php``, ``/x1``, ``/x2``...) a set of its own: 50,000 of them grew a worker by ~0.9 GB
and made one scrape take ~35 s. :func:`install_route_labels` makes BentoML label a request by the route the app
matches it to (:mod:`serving.edge_routes`): a known path as itself, item routes ``/items/{id}/thumbnail``, and any
path the service does not route ``/{unrouted}``, one label for all of them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from serving.edge_routes import ITEM_LABEL, UNROUTED, match_scope

__all__ = ["ITEM_LABEL", "UNROUTED", "install_route_labels", "observe_batch", "observe_embed", "observe_search",
           "report", "route_label", "served"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENDPOINTS = ("search", "search_by_id", "search_batch")


@dataclass(frozen=True)
class _Metrics:
    version: object
    index_size: object
    batch_size: object
    embed_latency: object
    search_latency: object


_MADE: list[_Metrics] = []
_LOCK = threading.Lock()
_VERSIONS: set[str] = set()  # every version this process has reported (set back to 0 once another is served)


def _get() -> _Metrics:
    if _MADE:
        return _MADE[0]
    with _LOCK:
        if not _MADE:
            from prometheus_client import Gauge, Histogram

            _MADE.append(_Metrics(
                version=Gauge("byol_served_version_info", "1 for the encoder version this server answers with now",
                              ["version"], multiprocess_mode="livemostrecent"),
                index_size=Gauge("byol_index_size", "items in the served version's index (0: no index)",
                                 multiprocess_mode="livemostrecent"),
                batch_size=Histogram("byol_micro_batch_size", "images per ONNX Runtime call of the micro-batcher",
                                     buckets=BATCH_BUCKETS),
                embed_latency=Histogram("byol_embed_latency_seconds",
                                        "one request's images from submit to vectors (micro-batch wait + model)",
                                        buckets=LATENCY_BUCKETS),
                search_latency=Histogram("byol_search_latency_seconds", "one index search call",
                                         ["endpoint"], buckets=LATENCY_BUCKETS),
            ))
    return _MADE[0]


def report(runtime) -> None:
    """Report what ``runtime`` (a :class:`serving.runtime.Runtime`) serves: at the start and after every write or
    reload. Blocking (the index size waits for a write in progress): call it in a thread from the event loop."""
    served(runtime.version, None if runtime.index is None else len(runtime.index))


def served(version: str, index_size: int | None) -> None:
    """Report the version served now and its index size."""
    m = _get()
    with _LOCK:
        _VERSIONS.add(version)
        for v in _VERSIONS:
            m.version.labels(version=v).set(1 if v == version else 0)
    m.index_size.set(index_size or 0)


def observe_batch(images: int) -> None:
    _get().batch_size.observe(images)


def observe_embed(seconds: float) -> None:
    _get().embed_latency.observe(seconds)


def observe_search(endpoint: str, seconds: float) -> None:
    _get().search_latency.labels(endpoint=endpoint).observe(seconds)


def route_label(scope: dict) -> str:
    """The ``endpoint`` label of a request: its route's template (a fixed route's path, ``/items/{id}/thumbnail``,
    ``/static_content/{path}``), :data:`UNROUTED` for a path the app in ``scope`` does not route."""
    return match_scope(scope).label


def install_route_labels() -> bool:
    """Make BentoML 1.4's request-metrics middleware label requests by route (:func:`route_label`: item routes by
    template, unrouted paths by one label); call before the service's app is built (the entry point does, as it
    does ``serving.deadline.install``). The middleware sees the label as the path: what runs inside it gets the
    real one back. Returns whether BentoML had the middleware to wrap."""
    try:
        from bentoml._internal.server.http import instruments
    except ImportError:
        return False
    base = getattr(instruments, "RunnerTrafficMetricsMiddleware", None)
    if base is None or getattr(base, "byol_templated", False):
        return base is not None

    class TemplatedPaths(base):
        byol_templated = True

        def __init__(self, app, **kwargs) -> None:
            async def real_path(scope, receive, send) -> None:
                path = scope.get("byol.path")
                await app(scope if path is None else {**scope, "path": path}, receive, send)

            super().__init__(real_path, **kwargs)

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] in ("http", "websocket"):  # the service routes no websocket: all are UNROUTED
                label = route_label(scope)
                if label != scope["path"]:
                    scope = {**scope, "path": label, "byol.path": scope["path"]}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = TemplatedPaths
    return True
