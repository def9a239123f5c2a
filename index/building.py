"""Building a :class:`index.vector_index.VectorIndex` in one go (``byol index build``, rebuilds): choose the type
for the real N, train and tune an approximate index, fill an exact one a chunk at a time.

Why chunks for an exact (Flat) index: it needs neither training nor tuning, so the vectors — often a memory map of an
``embed-folder`` output — are normalised and added 100k at a time, and with ``metadata=None`` no Python object is
kept per item (the items are streamed into the item store when the index is saved): millions of items build in the
memory of their vectors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from index import tuning
from index.chooser import DEFAULT_MEMORY_BUDGET, choose_index
from index.errors import IndexStoreError

if TYPE_CHECKING:
    from index.vector_index import VectorIndex


def build(cls: type[VectorIndex], vectors: np.ndarray, metadata: list[dict] | None, encoder_version: str,
          factory: str | None = "auto", memory_budget_bytes: int | None = None,
          recall_target: float | None = tuning.DEFAULT_RECALL_TARGET) -> VectorIndex:
    """``factory='auto'`` asks :func:`choose_index` with the real N. An approximate index gets nprobe / efSearch for
    ``recall_target`` (None: the defaults) on a held-out sample, added last."""
    from index.vector_index import ADD_CHUNK

    x = np.asarray(vectors)
    if x.ndim != 2:
        raise IndexStoreError(f"vectors must be 2-D, got shape {list(x.shape)}")
    if not factory or factory == "auto":
        factory = choose_index(len(x), x.shape[1], memory_budget_bytes or DEFAULT_MEMORY_BUDGET)[0]
    idx = cls(x.shape[1], encoder_version, factory)
    if idx._index.is_trained and not (recall_target is not None and idx.spec.kind == "HNSW"):
        if metadata is None:
            idx.metadata = None
        for lo in range(0, len(x), ADD_CHUNK):
            part = x[lo:lo + ADD_CHUNK]
            unit, metas = idx.prepare_add(part, [{}] * len(part) if metadata is None else
                                          metadata[lo:lo + ADD_CHUNK], encoder_version)
            idx.add_prepared(unit, metas, np.arange(lo, lo + len(unit), dtype=np.int64))
        return idx
    if metadata is None:
        raise IndexStoreError(f"{factory} is trained or tuned on all the vectors at once: it needs the metadata")
    unit, metas = idx.prepare_add(x, metadata, encoder_version)
    tuned = recall_target is not None and idx.spec.kind in ("IVF", "HNSW")
    rest, held = tuning.held_out(len(unit)) if tuned else (np.arange(len(unit)), np.arange(0))
    if not idx._index.is_trained:  # the held-out rows stay out of k-means too (when enough rows remain)
        idx._train(unit, rest if len(rest) >= idx.spec.nlist else None)
    for rows in (rest, held):
        if rows is held and len(held):
            _tune(idx, unit, held, recall_target)
        for lo in range(0, len(rows), ADD_CHUNK):  # chunks: no second full copy of the vectors
            part = rows[lo:lo + ADD_CHUNK]
            idx.add_prepared(unit[part], [metas[i] for i in part], part.astype(np.int64))
    return idx


def _tune(idx: VectorIndex, unit: np.ndarray, held: np.ndarray, target: float) -> None:
    """nprobe / efSearch for recall >= ``target`` on ``unit[held]``, rows not added yet (``index.tuning``)."""
    from index.vector_index import EF_SEARCH_RANGE

    ivf = idx.spec.kind == "IVF"
    lo, hi = (1, idx.spec.nlist) if ivf else EF_SEARCH_RANGE
    truth = tuning.exact_neighbours(unit, held)  # row positions = ids in a fresh build
    idx.tuning = tuning.tune(lambda q, k: idx._index.search(q, k)[1],
                             lambda v: idx.set_search_params(**{"nprobe" if ivf else "ef_search": v}),
                             unit[held], truth, "nprobe" if ivf else "efSearch", lo, hi, target=target,
                             label=idx.factory).to_json()
