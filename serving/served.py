"""The served runtime, its hot swap, and the writes that must land in whichever runtime is served when they apply.

Rules, and why:

* one asyncio lock (``writes``) orders every index write against the reconcile-and-swap of a reload, so what is
  added or removed while a new version loads is either reconciled into it or applied to it after the swap;
* an add embeds with the version served when it starts, then takes the lock and checks that this version is still
  the served one; when a swap came in between, it embeds again with the new version and writes there (a write
  never lands in an index that is no longer served, where the swap would lose it);
* ids belong to one version's index: a removal by id must name that version (409 when another one is served now);
  a removal by URI (``sha256:<hex>`` of the image, stable across versions) needs none;
* a storage failure (full or failing disk) is a 503: nothing of that write was kept (``index.wal`` cuts it back),
  and a retried add is idempotent (same image → same id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np
from anyio import to_thread

from index import writes
from index.collection import Collection
from index.errors import IndexStoreError
from serving import memory
from serving.contract.bundle import BundleError
from serving.errors import BadRequest, Conflict, NotFoundError, Unavailable
from serving.release import ReleaseError, served_tag
from serving.runtime import Runtime, load_runtime

log = logging.getLogger(__name__)

Pixels = Callable[[int], Awaitable[np.ndarray]]  # input size → the request's images at that size


async def _write(fn, *args):
    """Run one write of the one write path in a thread; map its failures to HTTP errors."""
    try:
        return await to_thread.run_sync(fn, *args)
    except OSError as exc:
        log.error("index write failed: %s", exc)
        raise Unavailable(f"storage failure ({exc.strerror or exc}); nothing was written, retry later") from None
    except IndexStoreError as exc:
        raise Conflict(str(exc)) from None


class Served:
    """Holds the served :class:`Runtime`; ``runtime`` is read once per request (a request never mixes versions)."""

    def __init__(self, runtime: Runtime, collection: Collection) -> None:
        self.runtime = runtime
        self.collection = collection
        self.reloading = asyncio.Lock()
        self.writes = asyncio.Lock()

    async def add(self, pixels: Pixels, datas: list[bytes], labels: list[str] | None) -> tuple[str, list[int]]:
        """Store and index uploads in the served version → ``(version, ids)`` (durable once returned)."""
        cache: dict[int, np.ndarray] = {}
        while True:
            rt = self.runtime
            if rt.index is None:
                raise Conflict(rt.missing["index"])
            if rt.input_size not in cache:
                cache[rt.input_size] = await pixels(rt.input_size)
            vecs = await rt.embed(cache[rt.input_size])
            async with self.writes:
                if self.runtime is not rt:
                    log.info("a reload swapped %s out while an add was embedded: embedding again", rt.version)
                    continue
                ids = await _write(writes.add_images, rt.index, self.collection, vecs, datas, labels, rt.version)
                return rt.version, [int(i) for i in ids]

    async def remove(self, ids: list[int], uris: list[str], version: str) -> tuple[str, int]:
        """Remove by ids of ``version`` (409 when another version is served now) and/or by URIs → ``(version, n)``."""
        async with self.writes:
            rt = self.runtime
            if rt.index is None:
                raise Conflict(rt.missing["index"])
            if ids and version != rt.version:
                raise Conflict(f"version mismatch: the ids are of version {version}'s index but the server now serves "
                               f"{rt.version}, where ids differ; search again and remove the new ids, or remove "
                               "by 'uris' (stable across versions)")
            removed = 0
            if ids:
                removed += await _write(writes.remove, rt.index, self.collection, ids)
            if uris:
                removed += await _write(writes.remove_uris, rt.index, self.collection, uris)
            return rt.version, removed

    async def reload(self, version: str) -> dict:
        """Load ``version`` (default: the promoted one) beside the served one, reconcile its index with the
        collection, swap, and close what the old version no longer needs → ``{"version", "previous"}``."""
        async with self.reloading:
            try:
                new = await to_thread.run_sync(load_runtime, version or served_tag())
            except (BundleError, ReleaseError) as exc:
                msg = str(exc)
                kind = NotFoundError if "no bundle" in msg else BadRequest if "bad bundle tag" in msg else Conflict
                raise kind(msg) from None
            try:
                async with self.writes:  # nothing added or removed between the reconcile and the swap is lost
                    if new.index is not None and new.version != self.runtime.version:
                        synced = await _write(writes.reconcile, new.index, self.collection,
                                              lambda items: new.embed_items(items, self.collection), new.version)
                        log.info("index of %s reconciled with the collection: %s", new.version, synced)
                    old, self.runtime = self.runtime, new
            except BaseException:
                new.close()
                raise
            previous = old.version
            if old is not new:
                old.close()
            del old  # requests still holding it keep it alive; the next swap's release gets what they leave
            log.info("now serving %s (was %s)", new.version, previous)
            await to_thread.run_sync(memory.release)
            return {"version": new.version, "previous": previous}
