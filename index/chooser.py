"""Pick a FAISS index type from (n, d, memory budget) without touching faiss (autofaiss-style, pure).

The chooser returns *ranked* factory strings; the builder tries the first and records what it built. Keeping
this pure means the policy is tested over a grid in milliseconds and can be overridden by a plain string.

Policy (cosine on unit vectors, inner product):
  * small collections (one exact query within the latency budget: n·d <= ``flat_max_cost``) → ``Flat``:
    exact, no training, supports remove;
  * larger → ``IVF{nlist},Flat`` with nlist ≈ 4·sqrt(n) (fast build, remove supported; nprobe is tuned to a
    recall target when it is built, ``index.tuning``), then ``HNSW32`` (slow build, no remove: tombstones; on the
    hard mixture of bench/index_search.py it needed efSearch 256 for recall@10 0.95 at 200k and ran 1.7x exact
    batched, where IVF1024,Flat ran 8x);
  * when raw float32 vectors do not fit the memory budget → ``IVF{nlist},PQ{m}`` (compressed codes).
Only candidates whose estimated memory fits the budget are returned; none fitting raises.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

DEFAULT_MEMORY_BUDGET = 4 * 1024**3  # bytes
# Latency budget as the cost of one exact query (n·d multiply-adds): 50k × 256-d ≈ 1-2 ms on one CPU core
# (bench/index_search.py: ~940 single-query QPS for Flat 10k×256, ~94 for 100k×256 on a shared 2-core box).
FLAT_MAX_COST = 50_000 * 256
MIN_POINTS_PER_CENTROID = 39  # below this FAISS k-means warns and centroids are poor
LISTS_PER_SQRT_N = 4  # nlist ≈ 4·sqrt(n): the low end of FAISS's 4-16·sqrt(n), k-means affordable on a few cores
HNSW_M = 32


class IndexChoiceError(ValueError):
    """No index type fits the request (bad n/d, or nothing fits the memory budget)."""


@dataclass(frozen=True)
class IndexSpec:
    """A parsed factory string: kind ('Flat', 'IVF', 'HNSW'), and the parameters the estimator needs."""

    kind: str
    nlist: int = 0
    hnsw_m: int = 0
    pq_m: int = 0
    pq_bits: int = 8
    ivf_storage: str = ""  # 'Flat' or 'PQ' for IVF


_IVF = re.compile(r"^IVF(\d+),(Flat|PQ(\d+)(?:x(\d+))?)$")
_HNSW = re.compile(r"^HNSW(\d+)(?:,Flat)?$")


def parse_factory(factory: str) -> IndexSpec:
    """Understand the factory strings the chooser emits (and the same family written by hand)."""
    f = factory.strip()
    if f == "Flat":
        return IndexSpec("Flat")
    m = _HNSW.match(f)
    if m:
        return IndexSpec("HNSW", hnsw_m=int(m.group(1)))
    m = _IVF.match(f)
    if m:
        if m.group(2) == "Flat":
            return IndexSpec("IVF", nlist=int(m.group(1)), ivf_storage="Flat")
        return IndexSpec("IVF", nlist=int(m.group(1)), ivf_storage="PQ", pq_m=int(m.group(3)),
                         pq_bits=int(m.group(4) or 8))
    raise IndexChoiceError(
        f"unsupported factory string {factory!r} (use Flat, HNSW<M>, IVF<nlist>,Flat or IVF<nlist>,PQ<m>)"
    )


def id_map_bytes(n: int) -> int:
    """IDMap keeps the id of each position (8 bytes an entry; IVF's hash direct map costs about as much)."""
    return 8 * n


def estimate_memory(factory: str, n: int, d: int) -> int:
    """Approximate resident bytes of the index holding ``n`` vectors of dim ``d`` (ids included)."""
    if n < 0 or d <= 0:
        raise IndexChoiceError(f"bad sizes n={n}, d={d}")
    spec = parse_factory(factory)
    vectors = 4 * n * d
    if spec.kind == "Flat":
        core = vectors
    elif spec.kind == "HNSW":
        # level-0 links 2M ids of 4 bytes + upper levels (~1/M of nodes) + per-node bookkeeping
        core = vectors + n * (2 * spec.hnsw_m * 4) * 1.1 + 16 * n
    elif spec.ivf_storage == "Flat":
        core = vectors + 8 * n + 4 * spec.nlist * d  # codes + inverted-list ids + centroids
    else:
        code = math.ceil(spec.pq_m * spec.pq_bits / 8)
        core = n * (code + 8) + 4 * spec.nlist * d + 4 * d * (1 << spec.pq_bits)  # + PQ codebooks
    return int(core + id_map_bytes(n))


def default_nlist(n: int) -> int:
    """~4·sqrt(n) lists as a power of two (1M vectors → 4096), with enough training points per centroid.

    Why not sqrt(n) (the earlier rule): on clustered data with about as many clusters as lists, k-means leaves
    clusters without a centroid of their own and their points scatter over other lists; at 1M vectors of the hard
    mixture (1,000 clusters) IVF1024 needed nprobe 128 for recall@10 0.95, slower than exact search batched. With
    ~4 lists per cluster (200k, 200 clusters, IVF1024) nprobe 6 reached 0.96 at 8x exact batched, 90x single; at
    1M, IVF4096 tuned to nprobe 12 reached 0.954 at 10.8x batched, 117x single (bench/results/index_search.json).
    FAISS suggests 4-16·sqrt(n); the low end keeps k-means (64 points per list) affordable on a few CPU cores.
    """
    target = LISTS_PER_SQRT_N * math.sqrt(max(n, 1))
    nlist = 1 << max(0, round(math.log2(target)))
    while nlist > 1 and n // nlist < MIN_POINTS_PER_CENTROID:
        nlist //= 2
    return max(nlist, 1)


def default_nprobe(nlist: int) -> int:
    """The starting nprobe of an index created empty (a build replaces it with a tuned one, ``index.tuning``):
    ~1/64 of the lists, at least 16 (16 gave recall@10 0.97 on real Fashion-MNIST embeddings, 60k, IVF256)."""
    return int(min(nlist, max(16, nlist // 64)))


def pq_m_candidates(d: int) -> list[int]:
    """Sub-quantizer counts FAISS accepts for dim ``d`` (m divides d), largest (most accurate) first."""
    return [m for m in (64, 48, 32, 24, 16, 8, 4) if m <= d and d % m == 0]


def choose_index(n: int, d: int, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET, *,
                 flat_max_cost: int = FLAT_MAX_COST, allow_hnsw: bool = True) -> list[str]:
    """Ranked factory strings for ``n`` vectors of dim ``d`` fitting ``memory_budget_bytes`` (best first).

    ``flat_max_cost`` is the latency budget: exact search is ranked first while one query costs at most that
    many multiply-adds (n·d). ``allow_hnsw=False`` drops HNSW (use it when removals are frequent: HNSW can only
    tombstone). Raises :class:`IndexChoiceError` when nothing fits; never returns an empty list.
    """
    flat_max = flat_max_cost // d if d > 0 else 0
    if d <= 0 or n < 0:
        raise IndexChoiceError(f"cannot choose an index for n={n}, d={d}")
    if memory_budget_bytes <= 0:
        raise IndexChoiceError(f"memory budget must be positive, got {memory_budget_bytes}")
    candidates: list[str] = []
    nlist = default_nlist(n)
    if n <= flat_max:
        candidates.append("Flat")
    if n > flat_max and nlist >= 16:
        candidates.append(f"IVF{nlist},Flat")
        if allow_hnsw:
            candidates.append(f"HNSW{HNSW_M}")
        candidates += [f"IVF{nlist},PQ{m}" for m in pq_m_candidates(d)]
    elif n > flat_max:  # too few points to train many lists: exact is still cheap
        candidates.append("Flat")
    if "Flat" not in candidates:
        candidates.append("Flat")  # exact as a last resort when it fits
    ranked = [f for f in candidates if estimate_memory(f, n, d) <= memory_budget_bytes]
    if not ranked:
        smallest = min(candidates, key=lambda f: estimate_memory(f, n, d))
        raise IndexChoiceError(
            f"no index fits {memory_budget_bytes / 2**20:.0f} MiB for n={n}, d={d}: the smallest candidate "
            f"{smallest} needs ~{estimate_memory(smallest, n, d) / 2**20:.0f} MiB"
        )
    return ranked
