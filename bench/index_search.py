"""Exact (Flat) vs the automatically chosen FAISS index, side by side: recall@10, QPS, build time, memory.

Data: a clustered mixture on the unit sphere (each cluster a low-dimensional subspace plus isotropic noise, like
real embeddings) at several sizes, plus real Fashion-MNIST embeddings of a bundle when ``--model`` is given.
Both indexes are our :class:`index.VectorIndex` (IDMap2 + metadata), i.e. what the service searches.
If the default search parameters miss the recall target, nprobe / efSearch are doubled until they reach it
(autofaiss-style tuning) and both rows are reported.

    .venv/bin/python bench/index_search.py --sizes 10k,100k,1M --queries 1000
    .venv/bin/python bench/index_search.py --sizes 10k --model latest     # + real embeddings

Writes ``bench/results/index_search.json``. Target: recall@10 >= 0.95 at >= 10x exact QPS at 1M.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.chooser import (  # noqa: E402
    DEFAULT_MEMORY_BUDGET,
    choose_index,  # noqa: E402
    default_nlist,
    estimate_memory,
    parse_factory,
)
from index.vector_index import (
    VectorIndex,  # noqa: E402
    set_omp_threads,  # noqa: E402
)

VERSION = "bench"
RESULTS = Path(__file__).resolve().parent / "results" / "index_search.json"


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "km" else s) * mult)


def sphere_mixture(n: int, d: int, clusters: int, seed: int, rank: int = 16, spread: float = 0.5,
                   noise: float = 0.2, chunk: int = 100_000) -> np.ndarray:
    """Unit vectors: centre_c (norm 1) + a ``rank``-dim Gaussian in cluster c's own subspace (typical norm
    ``spread``) + isotropic noise (typical norm ``noise``), normalised. Deterministic per seed."""
    base = np.random.default_rng(1234)  # the clusters are shared by database and queries
    centres = base.normal(size=(clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = base.normal(size=(clusters, rank, d)).astype(np.float32) / np.sqrt(d) * (spread / np.sqrt(rank))
    noise = noise / np.sqrt(d)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        c = rng.integers(0, clusters, hi - lo)
        z = rng.normal(size=(hi - lo, rank)).astype(np.float32)
        x = centres[c] + noise * rng.normal(size=(hi - lo, d)).astype(np.float32)
        order = np.argsort(c, kind="stable")
        starts = np.searchsorted(c[order], np.arange(clusters + 1))
        for k in range(clusters):  # per-cluster matmul: no [n, rank, d] temporary
            rows = order[starts[k]:starts[k + 1]]
            if len(rows):
                x[rows] += z[rows] @ bases[k]
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed_search(index: VectorIndex, q: np.ndarray, k: int, single: int) -> tuple[np.ndarray, float, float]:
    t0 = time.perf_counter()
    hits = index.search(q, k, VERSION)
    batch_s = time.perf_counter() - t0
    set_omp_threads(1)  # one query at a time, as a service thread searches (see set_omp_threads)
    t0 = time.perf_counter()
    for row in q[:single]:
        index.search(row[None], k, VERSION)
    single_s = (time.perf_counter() - t0) / max(single, 1)
    set_omp_threads(os.cpu_count() or 1)
    ids = np.array([[h.id for h in row] + [-1] * (k - len(row)) for row in hits])
    return ids, len(q) / batch_s, 1.0 / single_s


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def build(x: np.ndarray, factory: str) -> tuple[VectorIndex, float]:
    metas = [{"uri": f"syn:{i}"} for i in range(len(x))]
    t0 = time.perf_counter()
    idx = VectorIndex.build(x, metas, VERSION, factory)
    return idx, time.perf_counter() - t0


def index_bytes(idx: VectorIndex) -> int:
    import faiss

    return int(faiss.serialize_index(idx._index).size)


def row(name, n, d, factory, idx, build_s, qps, single_qps, rec, exact, params) -> dict:
    r = {"dataset": name, "n": n, "dim": d, "factory": factory, "params": params, "build_s": round(build_s, 2),
         "batch_qps": round(qps, 1), "single_qps": round(single_qps, 1), "recall_at_10": round(rec, 4),
         "memory_mb": round(index_bytes(idx) / 2**20, 1),
         "estimated_mb": round(estimate_memory(factory, n, d) / 2**20, 1)}
    if exact:
        r["speedup_batch"] = round(qps / exact["batch_qps"], 1)
        r["speedup_single"] = round(single_qps / exact["single_qps"], 1)
        r["memory_ratio"] = round(r["memory_mb"] / exact["memory_mb"], 2)
    return r


def compare(name: str, x: np.ndarray, q: np.ndarray, k: int, single: int, budget: int, target: float,
            force: str | None = None) -> list[dict]:
    """Exact first, then the chosen index (or ``force``d one, marked as such) with nprobe/efSearch tuning."""
    n, d = x.shape
    exact, exact_build = build(x, "Flat")
    truth, qps, sqps = timed_search(exact, q, k, single)
    rows = [row(name, n, d, "Flat", exact, exact_build, qps, sqps, 1.0, None, {})]
    rows[0]["chosen"] = choose_index(n, d, budget)[0] == "Flat"
    factory = force or choose_index(n, d, budget)[0]
    print(f"  {name} n={n}: exact done, {'forced' if force else 'chosen'} {factory}", file=sys.stderr, flush=True)
    if factory == "Flat":
        return rows
    idx, build_s = build(x, factory)
    del exact
    spec = parse_factory(factory)
    for attempt in range(8):
        params = {"nprobe": idx.nprobe} if spec.kind == "IVF" else {"efSearch": idx.ef_search}
        found, qps, sqps = timed_search(idx, q, k, single)
        rec = recall(found, truth)
        r = row(name, n, d, factory, idx, build_s, qps, sqps, rec, rows[0], params)
        r["tuned"] = attempt > 0
        r["chosen"] = force is None
        rows.append(r)
        if rec >= target:
            break
        if spec.kind == "IVF" and idx.nprobe < spec.nlist:
            idx.set_search_params(nprobe=min(spec.nlist, idx.nprobe * 2))
        elif spec.kind == "HNSW":
            idx.set_search_params(ef_search=idx.ef_search * 2)
        else:
            break
    return rows


def fmnist_embeddings(tag: str, n_queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    from clients.workflows.indexing import open_encoder
    from serving.contract.sources import load_fashion_mnist

    enc = open_encoder(tag)
    train, test = load_fashion_mnist(None, "train"), load_fashion_mnist(None, "test")
    return enc.embed_many(train.images), enc.embed_many(test.images[:n_queries]), enc.version


def print_table(rows: list[dict]) -> None:
    cols = ["dataset", "n", "factory", "chosen", "params", "build_s", "batch_qps", "single_qps", "recall_at_10",
            "memory_mb", "speedup_batch", "speedup_single", "memory_ratio"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10k,100k,1M")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200,
                    help="queries timed one at a time with 1 FAISS thread (service-like latency)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--memory-budget-gb", type=float, default=DEFAULT_MEMORY_BUDGET / 2**30)
    ap.add_argument("--spread", type=float, default=1.0,
                    help="within-cluster (low-rank) spread, centre norm 1 (cosine within a cluster ~0.5)")
    ap.add_argument("--noise", type=float, default=0.3, help="isotropic noise norm")
    ap.add_argument("--force", default=None, help="compare exact with this factory string instead of the chosen one")
    ap.add_argument("--model", default=None, help="bundle tag: add real Fashion-MNIST embeddings (60k train)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    budget = int(args.memory_budget_gb * 2**30)
    rows: list[dict] = []
    t_start = time.perf_counter()
    for size in [parse_size(s) for s in args.sizes.split(",") if s]:
        clusters = max(10, size // 1000)
        x = sphere_mixture(size, args.dim, clusters, seed=0, spread=args.spread, noise=args.noise)
        q = sphere_mixture(args.queries, args.dim, clusters, seed=1, spread=args.spread, noise=args.noise)
        rows += compare("sphere-mixture", x, q, args.k, args.single, budget, args.target, force=args.force)
        del x
    if args.model:
        x, q, version = fmnist_embeddings(args.model, args.queries)
        name = f"fashion-mnist:{version}"
        rows += compare(name, x, q, args.k, args.single, budget, args.target)
        if rows[-1]["factory"] == "Flat":  # exact is the right call at this size; still show IVF on real data
            rows += compare(name, x, q, args.k, args.single, budget, args.target,
                            force=f"IVF{default_nlist(len(x))},Flat")[1:]
    total = time.perf_counter() - t_start
    print_table(rows)
    print(f"total {total:.0f} s")
    out = {"rows": rows, "total_s": round(total, 1), "queries": args.queries, "k": args.k,
           "data": {"generator": "sphere_mixture", "dim": args.dim, "rank": 16, "spread": args.spread,
                    "noise": args.noise, "clusters": "max(10, n/1000)"},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "note": "CPU timings on a shared machine are noisy; ratios within one run are the comparison"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
