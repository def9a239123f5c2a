"""The index service's state: the served version's holdings, the collection, the one write path, the reload and
its swap — and the rule that a vector is answered only by the version that made it.

Rules, and why:

* every call that carries vectors names their version; when it is not the served one the call answers
  ``{"stale": <served version>}`` and does nothing: the embedding worker (:mod:`serving.following`) then loads the
  served encoder, embeds again and calls again. No answer mixes two versions, and no write lands in an index that
  is no longer served (where a swap would lose it);
* one asyncio lock (``writes``) orders every index write against the reconcile-and-swap of a reload, so what is
  added or removed while a new version loads is either reconciled into it or refused as stale and written again;
* ids belong to one version's index: a removal by id must name that version (409 when another one is served now);
  a removal by URI (``sha256:<hex>`` of the image, stable across versions) needs none;
* a storage failure (full or failing disk) is a 503: nothing of that write was kept (its SQLite transaction
  rolls back), and a retried add is idempotent (same image → same id);
* the embedding workers poll :meth:`Owner.status` (``BYOL_FOLLOW_S``): the owner knows which workers are alive and
  which version each serves, so a reload can answer once every worker has followed it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from anyio import to_thread

from index import writes
from index.collection import Collection
from index.db import StoreDamagedError
from index.errors import IndexStoreError
from serving import http_helpers as h
from serving import items, memory
from serving.contract.bundle import BundleError
from serving.errors import BadRequest, Conflict, NotFoundError, Unavailable, public
from serving.holdings import Holdings, load_holdings
from serving.release import ReleaseError, served_tag
from serving.runtime import embed_items, load_encoder

log = logging.getLogger(__name__)
MISSED_POLLS = 4  # a worker that has missed this many polls (and at least 2 s) is taken for gone


async def _write(fn, *args):
    """Run one write of the one write path in a thread; map its failures to HTTP errors."""
    try:
        return await to_thread.run_sync(fn, *args)
    except OSError as exc:
        log.error("index write failed: %s", exc)
        raise Unavailable(f"storage failure ({exc.strerror or exc}); nothing was written, retry later") from None
    except IndexStoreError as exc:
        raise Conflict(public(str(exc))) from None


def stale(served: str) -> dict:
    """The answer to vectors of another version than the served one."""
    return {"stale": served}


class Owner:
    """Holds the served :class:`Holdings`; read once per call (a call never mixes versions)."""

    def __init__(self, holdings: Holdings, collection: Collection) -> None:
        self.holdings = holdings
        self.collection = collection
        self.reloading = asyncio.Lock()
        self.writes = asyncio.Lock()
        self.workers: dict[str, tuple[str, float]] = {}  # worker → (version it serves, when it is taken for gone)

    def _vectors(self, hd: Holdings, vectors) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != hd.dim or not np.all(np.isfinite(vectors)):
            raise BadRequest(f"vectors must be finite float32 [N, {hd.dim}] of version {hd.version}, got "
                             f"{list(vectors.shape)}")
        return vectors

    # -- the embedding workers' view --------------------------------------------------------------------------------

    def status(self, worker: str = "", version: str = "", every: float = 0.5) -> dict:
        """The served version and what it lacks; a worker that names itself (polling ``every`` seconds) is counted
        as alive on ``version`` until it misses a few polls."""
        if worker:
            self.workers[worker] = (version, time.monotonic() + max(2.0, MISSED_POLLS * every))
        hd = self.holdings
        return {"version": hd.version, "missing": hd.missing}

    def live_workers(self) -> dict[str, str]:
        """Worker → the version it serves, of the workers that have not missed their last polls."""
        now = time.monotonic()
        return {w: v for w, (v, gone) in self.workers.items() if now < gone}

    # -- reads -------------------------------------------------------------------------------------------------------

    async def search(self, vectors, version: str, k: int, endpoint: str) -> dict:
        """Neighbours of each vector → ``{"version", "body"}``: the HTTP answer's JSON, made here in a thread (made
        once, where the hits are: up to ``BYOL_MAX_RESULTS`` of them must not hold up either event loop) —
        ``{"version", "results": [...]}``, one list per vector for ``search_batch``, the one list for ``search``."""
        hd = self.holdings
        if version != hd.version:
            return stale(hd.version)
        vectors = self._vectors(hd, vectors)
        h.check_k(k)

        def answer() -> bytes:
            try:
                rows = [h.hits_json(row) for row in hd.search(vectors, k, endpoint)]
            except StoreDamagedError as exc:  # the operator's problem, named, not the caller's: 503 and the log
                log.error("search failed: %s", exc)
                raise Unavailable(f"the index's item store is damaged: {public(str(exc))}") from None
            return h.json_bytes({"version": hd.version, "results": rows if endpoint == "search_batch" else rows[0]})

        return {"version": hd.version, "body": await to_thread.run_sync(answer)}

    async def classify(self, vectors, version: str, method: str) -> dict:
        hd = self.holdings
        if version != hd.version:
            return stale(hd.version)
        clf = hd.classifier(method)
        proba = await to_thread.run_sync(clf.predict_proba, self._vectors(hd, vectors))
        return {"version": hd.version, "method": method, **h.proba_json(clf.classes, proba[0])}

    async def neighbours(self, item_id: int, k: int) -> dict:
        return await items.neighbours(self.holdings, item_id, k)

    def item(self, item_id: int) -> dict:
        """``{"version", "id", "metadata", "etag"}`` of an indexed item (404/409 as ``items.metadata_of``)."""
        hd = self.holdings
        meta = items.metadata_of(hd, item_id)
        return {"version": hd.version, "id": item_id, "metadata": meta, "etag": items.etag(hd.version, item_id, meta)}

    async def image(self, item_id: int) -> bytes:
        """The encoded image of an indexed item (its thumbnail is made by the embedding worker)."""
        meta = items.metadata_of(self.holdings, item_id)
        return await to_thread.run_sync(items.read_image, item_id, meta, self.collection)

    def info(self) -> dict:
        return {"version": self.holdings.version, **self.holdings.info(), "workers": self.live_workers()}

    # -- writes ------------------------------------------------------------------------------------------------------

    async def add(self, vectors, version: str, datas: list[bytes], labels: list[str] | None) -> dict:
        """Store and index uploads embedded by ``version`` → ``{"version", "ids"}`` (durable once returned)."""
        async with self.writes:
            hd = self.holdings
            if hd.index is None:
                raise Conflict(hd.missing["index"])
            if version != hd.version:
                return stale(hd.version)
            vectors = self._vectors(hd, vectors)
            ids = await _write(writes.add_images, hd.index, self.collection, vectors, datas, labels, hd.version)
        await to_thread.run_sync(hd.report)
        return {"version": hd.version, "ids": [int(i) for i in ids]}

    async def remove(self, ids: list[int], uris: list[str], version: str) -> dict:
        """Remove by ids of ``version`` (409 when another version is served now) and/or by URIs."""
        async with self.writes:
            hd = self.holdings
            if hd.index is None:
                raise Conflict(hd.missing["index"])
            if ids and version != hd.version:
                raise Conflict(f"version mismatch: the ids are of version {version}'s index but the server now serves "
                               f"{hd.version}, where ids differ; search again and remove the new ids, or remove "
                               "by 'uris' (stable across versions)")
            removed = 0
            if ids:
                removed += await _write(writes.remove, hd.index, self.collection, ids)
            if uris:
                removed += await _write(writes.remove_uris, hd.index, self.collection, uris)
        await to_thread.run_sync(hd.report)
        return {"version": hd.version, "removed": int(removed)}

    async def reload(self, version: str) -> dict:
        """Load ``version`` (default: the promoted one) beside the served one, reconcile its index with the
        collection, swap, and close what the old version no longer needs → ``{"version", "previous"}``. From the
        swap on, vectors of the old version are refused as stale: the embedding workers follow."""
        async with self.reloading:
            try:
                new = await to_thread.run_sync(load_holdings, version or served_tag())
            except (BundleError, ReleaseError) as exc:
                msg = public(str(exc))
                kind = NotFoundError if "no bundle" in msg else BadRequest if "bad bundle tag" in msg else Conflict
                raise kind(msg) from None
            try:
                async with self.writes:  # nothing added or removed between the reconcile and the swap is lost
                    if new.index is not None and new.version != self.holdings.version:
                        synced = await _write(self._reconcile, new)
                        log.info("index of %s reconciled with the collection: %s", new.version, synced)
                    old, self.holdings = self.holdings, new
            except BaseException:
                new.close()
                raise
            previous = old.version
            old.close()
            del old  # calls still holding it finish on it; its memory goes with the last of them
            log.info("now serving %s (was %s)", new.version, previous)
            await to_thread.run_sync(new.report)
            await to_thread.run_sync(memory.release)
            return {"version": new.version, "previous": previous}

    def _reconcile(self, new: Holdings) -> dict:
        """Embed what the collection holds beyond ``new``'s index with ``new``'s encoder (loaded for this only:
        the index service runs no encoder between reloads)."""
        try:
            encoder = load_encoder(new.version)
        except BundleError as exc:
            raise IndexStoreError(str(exc)) from None
        return writes.reconcile(new.index, self.collection, lambda its: embed_items(encoder, its, self.collection),
                                new.version)
