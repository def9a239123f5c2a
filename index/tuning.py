"""Recall-targeted search parameters, chosen when an approximate index is built (autofaiss-style).

Why measure instead of using a fixed default: how many IVF lists (``nprobe``) or HNSW candidates (``efSearch``)
a query needs depends on the data, not only on the index size. A fixed nprobe=16 gave recall@10 1.00 on an easy
mixture and 0.82 on a hard one of the same size (bench/results/index_search*.json). So the builder measures:

  * held-out queries: a seeded sample of the vectors being indexed (``held_out``), kept out of the k-means
    training and out of the index until the parameter is chosen, then added: the final index holds every vector,
    and the queries were fresh to it when they were measured (a sample searched while it sits in the index, or was
    a training point, reads optimistic: 0.952 where fresh queries got 0.938 in a first version of this).
    Held-out rows estimate the recall of queries *like the indexed vectors*: at 1M, 0.952 held-out vs 0.954 for fresh
    queries on the hard mixture, but 0.951 vs 0.945 for Fashion-MNIST test images against train images plus their
    augmented copies (a held-out copy has siblings in the index; a test image has none) — ask a higher target then;
  * ground truth: exact top-k among the other rows by brute force (``faiss.knn``, no copy of the vectors);
  * the smallest parameter value whose recall@k reaches the target: recall grows (near-)monotonically with both
    parameters, so doubling finds a bracket and bisection the smallest passing value (a few searches of the
    sample each, cheap next to building the index).

When no value in range reaches the target (a compressed index can stop short of it), the value with the best
recall is kept and the result says ``reached: false`` with the recall it does reach — never a silent miss.

This module knows nothing of our index classes: it takes a ``search(queries, k) -> ids`` and an
``apply(value)`` callable, so any FAISS index (wrapped or not) can be tuned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_RECALL_TARGET = 0.95
DEFAULT_TUNING_QUERIES = 1000  # 10k neighbour pairs at k=10: recall known to about ±0.005
DEFAULT_K = 10
DEFAULT_SEED = 0


@dataclass(frozen=True)
class TuningResult:
    """What the build chose and why: stored in the snapshot's meta.json beside the value itself."""

    param: str  # "nprobe" or "efSearch"
    value: int
    recall: float  # recall@k at ``value`` on the held-out queries
    target: float
    reached: bool
    k: int
    queries: int
    tried: list[list[float]]  # [value, recall] pairs in the order measured
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)


def held_out(n: int, n_queries: int = DEFAULT_TUNING_QUERIES, seed: int = DEFAULT_SEED
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, held)``: sorted row positions to index first and the seeded sample kept out until tuned (at most a
    tenth of the rows, so small collections still train and fill the index with the other nine tenths)."""
    held = np.sort(np.random.default_rng(seed).choice(n, min(int(n_queries), n // 10), replace=False))
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    return np.flatnonzero(keep), held


def exact_neighbours(vectors: np.ndarray, held: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Exact top-``k`` row positions (inner product) of ``vectors[held]`` among the rows *not* in ``held``.

    Searches all rows (no copy of the others: ``faiss.knn`` over the whole array), fetching more where held-out
    rows crowd the top of a list, then drops them.
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n_other = len(x) - len(held)
    k = min(int(k), n_other)
    fetch = min(len(x), 2 * k + 1)
    while True:
        _, idx = faiss.knn(x[held], x, fetch, faiss.METRIC_INNER_PRODUCT)
        keep = ~np.isin(idx, held)
        if fetch == len(x) or (keep.sum(axis=1) >= k).all():
            break
        fetch = min(len(x), 2 * fetch)
    return np.stack([row[ok][:k] for row, ok in zip(idx, keep, strict=True)]).astype(np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` present in the same row of ``found`` (-1 pads never count)."""
    if len(truth) == 0:
        return 1.0
    hits = [len(set(f.tolist()) & (set(t.tolist()) - {-1})) / max(1, int((t >= 0).sum()))
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def smallest_passing(evaluate: Callable[[int], float], lo: int, hi: int, target: float
                     ) -> tuple[int, float, bool, list[list[float]]]:
    """Smallest integer in ``[lo, hi]`` with ``evaluate(v) >= target``, assuming recall grows with ``v``.

    Returns ``(value, recall, reached, tried)``; unreached → the smallest value with the best recall seen.
    """
    if lo < 1 or hi < lo:
        raise ValueError(f"bad search range [{lo}, {hi}]")
    seen: dict[int, float] = {}
    tried: list[list[float]] = []

    def measure(v: int) -> float:
        if v not in seen:
            seen[v] = float(evaluate(v))
            tried.append([v, round(seen[v], 4)])
        return seen[v]

    below, v = None, lo
    while True:  # doubling: the first passing value bounds the answer from above
        if measure(v) >= target:
            break
        below = v
        if v == hi:
            best = max(seen.values())
            return min(u for u, r in seen.items() if r == best), best, False, tried
        v = min(hi, v * 2)
    above = v
    while below is not None and above - below > 1:  # bisection between the last failing and first passing value
        mid = (below + above) // 2
        if measure(mid) >= target:
            above = mid
        else:
            below = mid
    return above, seen[above], True, tried


def tune(search: Callable[[np.ndarray, int], np.ndarray], apply: Callable[[int], None], queries: np.ndarray,
         truth: np.ndarray, param: str, lo: int, hi: int, *, target: float = DEFAULT_RECALL_TARGET,
         label: str = "index") -> TuningResult:
    """Choose ``param`` in ``[lo, hi]`` so that ``search`` finds ``truth`` (``[q, k]`` true neighbour ids of
    ``queries``) with recall >= ``target``. ``search(queries, k)`` returns the index's ``[q, k]`` ids with the current
    setting; ``apply(value)`` changes the setting. The chosen value is applied before returning."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"recall target must be in (0, 1], got {target}")
    t0 = time.perf_counter()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = int(truth.shape[1])

    def evaluate(value: int) -> float:
        apply(value)
        return recall_at_k(search(queries, k), truth)

    value, recall, reached, tried = smallest_passing(evaluate, lo, hi, target)
    apply(value)
    result = TuningResult(param, int(value), round(recall, 4), target, reached, k, len(queries), tried,
                          round(time.perf_counter() - t0, 2))
    (log.info if reached else log.warning)(
        "%s: %s=%d gives recall@%d %.3f on %d held-out queries (target %.2f%s; %d settings tried in %.1f s)", label,
        param, value, k, recall, len(queries), target, "" if reached else ", NOT reached", len(tried),
        result.seconds)
    return result
