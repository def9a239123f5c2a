"""The index service: ONE process that owns the served version's index, its classifiers, the collection, the one
write path, and the reload and swap (:class:`serving.served.Owner`).

It is a BentoML service of its own that the public API (:class:`serving.service.ByolEmbed`, the embedding workers)
reaches through ``bentoml.depends``: locally ``bentoml serve`` runs it as a separate process behind a Unix socket,
in a cluster as a deployment of its own. It has ``workers=1`` by design: two processes writing one index would
each hold their own copy and drift apart. It is not public: it has no edge, no token check and no HTTP port of its
own under ``bentoml serve`` — callers are the embedding workers, which checked the request already.

Every method that takes vectors takes the version that made them and answers ``{"stale": <served>}`` when it is
not the served one (the worker then follows: :mod:`serving.following`).
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
from anyio import to_thread

from index.collection import Collection
from index.vector_index import set_omp_threads
from serving import paths
from serving.holdings import load_holdings
from serving.runtime import resolve_tag
from serving.served import Owner

INDEX_SERVICE = "byol_index"


# No access log: every embedding worker polls ``status`` (serving.following), and the public requests are logged by
# the embedding service already; errors are still logged.
# runner_connection: BentoML 1.4.39's dependency client replaces its connection pool after ``max_requests`` calls
# (default 100) or ``max_age`` seconds (300) by closing the old pool — with the calls still in flight on it, which
# then fail with "Server disconnected" (measured: 503s on /index/remove during a reload, test_reload_swap). One pool
# for the life of the worker instead; the index service is one process at one address, nothing to rebalance.
NEVER = {"max_requests": 2**62, "max_age": 1e15}


@bentoml.service(name=INDEX_SERVICE, workers=1, traffic={"timeout": 120}, logging={"access": {"enabled": False}},
                 runner_connection=NEVER)
class ByolIndex:
    def __init__(self) -> None:
        # One FAISS thread per search: requests search concurrently, and OpenMP threads fighting over a busy CPU
        # made a single query up to ~30x slower (bench/index_search.py, index.vector_index.set_omp_threads).
        set_omp_threads(int(os.environ.get("BYOL_FAISS_THREADS", "1")))
        self.owner = Owner(load_holdings(resolve_tag()), Collection(paths.collection_dir()))
        self.owner.holdings.report()

    @bentoml.api
    async def status(self, worker: str = "", version: str = "", every: float = 0.5) -> dict:
        """The served version and what it lacks; ``worker`` (with the ``version`` it serves, polling ``every``
        seconds) is counted alive."""
        return self.owner.status(worker, version, every)

    @bentoml.api
    async def search(self, vectors: np.ndarray, version: str, k: int, endpoint: str = "search") -> dict:
        return await self.owner.search(vectors, version, k, endpoint)

    @bentoml.api
    async def classify(self, vectors: np.ndarray, version: str, method: str = "probe") -> dict:
        return await self.owner.classify(vectors, version, method)

    @bentoml.api
    async def neighbours(self, item_id: int, k: int) -> dict:
        return await self.owner.neighbours(item_id, k)

    @bentoml.api
    async def item(self, item_id: int) -> dict:
        return self.owner.item(item_id)

    @bentoml.api
    async def image(self, item_id: int) -> dict:
        """``{"data": <the item's encoded image>}`` (bytes in a dict: a bare ``bytes`` answer is not pickled)."""
        return {"data": await self.owner.image(item_id)}

    @bentoml.api
    async def info(self) -> dict:
        return await to_thread.run_sync(self.owner.info)  # the index size waits for a write in progress

    @bentoml.api
    async def add(self, vectors: np.ndarray, version: str, datas: list[bytes],
                  labels: list[str] | None = None) -> dict:
        return await self.owner.add(vectors, version, datas, labels)

    @bentoml.api
    async def remove(self, ids: list[int], uris: list[str], version: str = "") -> dict:
        return await self.owner.remove(ids, uris, version)

    @bentoml.api
    async def reload(self, version: str = "") -> dict:
        return await self.owner.reload(version)
