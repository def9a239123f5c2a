"""The one write path for an index and its collection: build, add, remove, reconcile.

Every writer goes through here — ``POST /index/add`` and ``/index/remove``, ``byol index build`` and ``byol index
add``, and the reconcile a reload runs before a swap — so the rules hold everywhere:

* the collection is written first (fsynced), the index's log last: every acknowledged id can be rebuilt by a new
  encoder version, and a crash in between leaves an unindexed collection item, never an unrecorded indexed one;
* a removal is recorded in the collection too, so a rebuild for a new version does not bring the item back;
* a published index appears complete or not at all (:meth:`DurableIndex.publish`).

Index metadata is a dict per item with at least ``uri`` (and ``label``); the collection keeps ``(uri, label)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from index.collection import Collection, Item
from index.durable import DurableIndex
from index.vector_index import VectorIndex


def _items(metadata: Sequence[dict]) -> list[Item]:
    return [Item(m["uri"], m.get("label")) for m in metadata]


def publish(index: VectorIndex, directory: str | os.PathLike, collection: Collection, force: bool = False,
            record: bool = True) -> None:
    """A built index becomes the one at ``directory``; with ``record`` its items join the collection first.

    ``record=False`` is for a rebuild *from* the collection (its items are already there).
    """
    if record:
        collection.add(_items([index.metadata[i] for i in sorted(index.metadata)]))
    DurableIndex.publish(index, directory, force=force)


def add(index: DurableIndex, collection: Collection, vectors: np.ndarray, metadata: list[dict],
        encoder_version: str) -> np.ndarray:
    """Record the items, then add their vectors durably; returns the new ids (durable once returned)."""
    collection.add(_items(metadata))
    return index.add(vectors, metadata, encoder_version)


def add_images(index: DurableIndex, collection: Collection, vectors: np.ndarray, datas: list[bytes],
               labels: list[str | None] | None, encoder_version: str) -> np.ndarray:
    """Uploads: keep each image's bytes in the collection (content-addressed), then :func:`add` them."""
    labels = labels if labels is not None else [None] * len(datas)
    uris = [collection.store_bytes(data) for data in datas]
    metadata = [{"uri": u, "label": lab} for u, lab in zip(uris, labels, strict=True)]
    return add(index, collection, vectors, metadata, encoder_version)


def remove(index: DurableIndex, collection: Collection, ids: Sequence[int]) -> int:
    """Remove from the index and record the removal in the collection; returns how many ids were present."""
    uris = [m["uri"] for m in (index.metadata(int(i)) for i in ids) if m and m.get("uri")]
    removed = index.remove(ids)
    collection.remove(uris)
    return removed


Embed = Callable[[list[Item]], tuple[np.ndarray, list[Item]]]  # items → vectors of those that could be read


def reconcile(index: DurableIndex, collection: Collection, embed: Embed, encoder_version: str,
              batch: int = 256) -> dict:
    """Bring an index in line with the collection: add what it lacks (via ``embed``), remove what was removed.

    Why: a new version's index is rebuilt from the collection while the old version keeps serving; images added
    or removed over HTTP in between would otherwise vanish or come back at the swap. The caller holds its write
    lock across this and the swap. Items ``embed`` cannot read are skipped, as a rebuild skips them.
    """
    wanted = {it.uri: it for it in collection.items()}
    present = index.items()
    have = {m.get("uri") for _, m in present}
    stale = [i for i, m in present if m.get("uri") not in wanted]
    missing = [it for uri, it in wanted.items() if uri not in have]
    added = 0
    for lo in range(0, len(missing), batch):
        vectors, readable = embed(missing[lo:lo + batch])
        if readable:
            index.add(vectors, [{"uri": it.uri, "label": it.label} for it in readable], encoder_version)
            added += len(readable)
    removed = index.remove(stale) if stale else 0
    return {"added": added, "removed": removed}
