"""The one write path for an index and its collection: build, add, remove, reconcile.

Every writer goes through here — ``POST /index/add`` and ``/index/remove``, ``byol index build`` and ``byol index
add``, and the reconcile a reload runs before a swap — so the rules hold everywhere:

* the collection is written first (committed), the index's item store last: every acknowledged id can be rebuilt
  by a new encoder version, and a crash in between leaves an unindexed collection item, never an unrecorded indexed
  one (they are two SQLite databases — the collection outlives every version's index — and SQLite commits across
  databases in WAL mode atomically only one by one, so the order is the rule);
* a removal is recorded in the collection first, then applied to the index, so neither a rebuild nor a reconcile
  for a new version brings the item back (a crash in between leaves an item the next reconcile drops);
* uploads are keyed by content (``sha256:`` URIs) and added idempotently: a retried add returns the same id;
* a published index appears complete or not at all (:meth:`DurableIndex.publish`).

Index metadata is a dict per item with at least ``uri`` (and ``label``); the collection keeps ``(uri, label)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from index.collection import Collection, Item
from index.durable import DurableIndex
from index.snapshot import index_items
from index.vector_index import VectorIndex


def _items(metadata: Sequence[dict]) -> list[Item]:
    return [Item(m["uri"], m.get("label")) for m in metadata]


def publish(index: VectorIndex, directory: str | os.PathLike, collection: Collection, force: bool = False,
            record: bool = True, items: Callable[[], Iterable[tuple[int, dict]]] | None = None) -> None:
    """A built index becomes the one at ``directory``; with ``record`` its items join the collection first.

    ``record=False`` is for a rebuild *from* the collection (its items are already there). ``items``: a callable
    giving ``(id, metadata)`` by id, for an index built without metadata (read twice: collection, then store).
    """
    if record:
        for part in _batched((m for _, m in index_items(index, items)), 10_000):
            collection.add(_items(part))
    DurableIndex.publish(index, directory, force=force, items=items)


def add(index: DurableIndex, collection: Collection, vectors: np.ndarray, metadata: list[dict],
        encoder_version: str) -> np.ndarray:
    """Record the items, then add their vectors durably; returns the new ids (durable once returned)."""
    collection.add(_items(metadata))
    return index.add(vectors, metadata, encoder_version)


def add_images(index: DurableIndex, collection: Collection, vectors: np.ndarray, datas: list[bytes],
               labels: list[str | None] | None, encoder_version: str) -> np.ndarray:
    """Uploads: keep each image's bytes in the collection (content-addressed), then add them — idempotently: an
    image the index holds already (same bytes) gets its existing id back and is not recorded again (its label
    stays as first given); the same image twice in one call gets one id."""
    labels = labels if labels is not None else [None] * len(datas)
    uris = [collection.store_bytes(data) for data in datas]
    metadata = [{"uri": u, "label": lab} for u, lab in zip(uris, labels, strict=True)]
    known = index.present_uris(uris)
    fresh, seen = [], set()
    for m in metadata:
        if m["uri"] not in known and m["uri"] not in seen:
            seen.add(m["uri"])
            fresh.append(m)
    collection.add(_items(fresh))
    return index.add(vectors, metadata, encoder_version, dedupe=True)


def remove(index: DurableIndex, collection: Collection, ids: Sequence[int]) -> int:
    """Record the removal in the collection, then remove from the index; returns how many ids were present."""
    uris = [m["uri"] for m in (index.metadata(int(i)) for i in ids) if m and m.get("uri")]
    collection.remove(uris)
    return index.remove(ids)


def remove_uris(index: DurableIndex, collection: Collection, uris: Sequence[str]) -> int:
    """Remove items by URI, the key that stays the same across versions (ids belong to one version's index)."""
    collection.remove([u for u in uris if u])
    return index.remove(index.ids_of(uris))


Embed = Callable[[list[Item]], tuple[np.ndarray, list[Item]]]  # items → vectors of those that could be read


def reconcile(index: DurableIndex, collection: Collection, embed: Embed, encoder_version: str,
              batch: int = 256) -> dict:
    """Bring an index in line with the collection: add what it lacks (via ``embed``), remove what was removed.

    Why: a new version's index is rebuilt from the collection while the old version keeps serving; images added
    or removed over HTTP in between would otherwise vanish or come back at the swap. The caller holds its write
    lock across this and the swap. Items ``embed`` cannot read are skipped, as a rebuild skips them. Both sides are
    compared a batch at a time through their databases: memory does not grow with the number of items.
    """
    added = 0
    for part in _batched(collection.items(), 4 * batch):
        have = index.present_uris(it.uri for it in part)
        missing = [it for it in part if it.uri not in have]
        for lo in range(0, len(missing), batch):
            vectors, readable = embed(missing[lo:lo + batch])
            if readable:
                index.add(vectors, [{"uri": it.uri, "label": it.label} for it in readable], encoder_version)
                added += len(readable)
    stale: list[int] = []
    for rows in index.uri_batches():
        kept = collection.present(u for _, u in rows)
        stale += [i for i, u in rows if u not in kept]
    removed = index.remove(stale) if stale else 0
    return {"added": added, "removed": removed}


def _batched(items: Iterable, n: int) -> Iterator[list]:
    part: list = []
    for it in items:
        part.append(it)
        if len(part) == n:
            yield part
            part = []
    if part:
        yield part
