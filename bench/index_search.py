"""Exact (Flat) vs the index the product builds, side by side: recall@10, batch and single-query QPS, build time.

The candidate is what ``byol index build`` makes: ``VectorIndex.build`` with the chooser's first choice and nprobe /
efSearch tuned at build time to the recall target on held-out samples of the indexed vectors (``index.tuning``);
recall here is measured on *other* queries (a second draw of the mixture, or Fashion-MNIST test images).

Measured the same way for every index (exact included), through ``VectorIndex.search`` (what the service calls):
  * batch: all ``--queries`` in one call, median of ``--repeats``, with ``--threads`` OpenMP threads (default all
    cores) and again with 1 thread; an index's batch figure is the better of the two. Why both: on a shared machine,
    OpenMP threads spinning for a core another process holds made exact batched search 4x slower with 2 threads
    than with 1 (the IVF search barely changed), which once made the recorded speed-ups 10x too generous;
  * single: ``--single`` queries one at a time with 1 thread (a service searches from request threads with
    ``BYOL_FAISS_THREADS=1``), after a warm-up.
The machine's load before/after and other processes' CPU during the run are recorded (``bench/machine.py``); a busy
run is flagged, and refused with ``--strict``.

Data: ``sphere-mixture`` (clusters of 1,000 vectors on the unit sphere, each a 16-dim subspace plus isotropic noise;
``--spread 2.4 --noise 0.8`` is the hard one) at ``--sizes``; with ``--real N``, Fashion-MNIST embeddings of an
encoder (``--model``: a bundle tag from the store, a bundle directory, or ``random`` for a random-init encoder of the
demo's shape exported on the fly): the 60k train images plus BYOL-augmented copies (the demo preset's view T) up
to N, queried with test images. Embeddings are cached under ``--cache``.

    .venv/bin/python bench/index_search.py --sizes 1M --spread 2.4 --noise 0.8 --real 1M --model random

Writes ``bench/results/index_search.json``. Target: recall@10 >= 0.95 at >= 10x exact QPS, batch and single.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import add_load_args, cores, load_line, machine, recorded_load  # noqa: E402
from index.chooser import DEFAULT_MEMORY_BUDGET, choose_index, estimate_memory  # noqa: E402
from index.tuning import recall_at_k  # noqa: E402
from index.vector_index import VectorIndex, set_omp_threads  # noqa: E402
from serving.contract.atomic import atomic_write_json  # noqa: E402

VERSION = "bench"
RESULTS = Path(__file__).resolve().parent / "results" / "index_search.json"
log = logging.getLogger("index_search")


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


# ---------------------------------------------------------------------------------------------- measuring
def _ids(hits: list, k: int) -> np.ndarray:
    return np.array([[h.id for h in row] + [-1] * (k - len(row)) for row in hits], dtype=np.int64)


def batch_qps(index: VectorIndex, q: np.ndarray, k: int, threads: int, repeats: int) -> tuple[float, np.ndarray]:
    """Median QPS of searching all of ``q`` in one call with ``threads`` OpenMP threads (after a warm-up)."""
    set_omp_threads(threads)
    index.search(q[:32], k, VERSION)
    times, hits = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        hits = index.search(q, k, VERSION)
        times.append(time.perf_counter() - t0)
    return len(q) / statistics.median(times), _ids(hits, k)


def single_qps(index: VectorIndex, q: np.ndarray, k: int) -> float:
    """QPS of one query per call with 1 OpenMP thread (a service's request thread), after a warm-up."""
    set_omp_threads(1)
    for row in q[:10]:
        index.search(row[None], k, VERSION)
    t0 = time.perf_counter()
    for row in q:
        index.search(row[None], k, VERSION)
    return len(q) / (time.perf_counter() - t0)


def measure(index: VectorIndex, q: np.ndarray, k: int, args) -> tuple[dict, np.ndarray]:
    """The same measurements for every index; returns the figures and the batch answers."""
    qps_all, found = batch_qps(index, q, k, args.threads, args.repeats)
    fig = {"batch_qps_all_threads": round(qps_all, 1)}
    if args.threads > 1:
        fig["batch_qps_1_thread"] = round(batch_qps(index, q, k, 1, args.repeats)[0], 1)
    fig["batch_qps"] = max(v for key, v in fig.items() if key.startswith("batch_qps_"))
    fig["single_qps"] = round(single_qps(index, q[:args.single], k), 1)
    set_omp_threads(args.threads)
    return fig, found


def index_mb(idx: VectorIndex) -> float:
    import faiss

    return round(int(faiss.serialize_index(idx._index).size) / 2**20, 1)


def evaluate(name: str, x: np.ndarray, q: np.ndarray, factory: str, truth: np.ndarray | None, exact: dict | None,
             args, role: str) -> tuple[dict, np.ndarray]:
    """Build ``factory`` as the product does (tuned unless exact), measure it, compare with the exact row."""
    n, d = x.shape
    t0 = time.perf_counter()
    idx = VectorIndex.build(x, [{}] * n, VERSION, factory, recall_target=None if factory == "Flat" else args.target)
    build_s = time.perf_counter() - t0
    log.info("%s n=%d: built %s (%s) in %.0f s; measuring", name, n, factory, role, build_s)
    fig, found = measure(idx, q, args.k, args)
    tuned = idx.tuning or {}
    row = {"dataset": name, "n": n, "dim": d, "role": role, "factory": factory, "build_s": round(build_s, 1),
           "tune_s": tuned.get("seconds"), "params": {tuned["param"]: tuned["value"]} if tuned else {},
           "heldout_recall": tuned.get("recall"), "recall_at_10": 1.0 if truth is None else
           round(recall_at_k(found, truth), 4), **fig, "memory_mb": index_mb(idx),
           "estimated_mb": round(estimate_memory(factory, n, d) / 2**20, 1)}
    if exact:
        row["speedup_batch"] = round(row["batch_qps"] / exact["batch_qps"], 1)
        row["speedup_single"] = round(row["single_qps"] / exact["single_qps"], 1)
        row["meets_target"] = bool(row["recall_at_10"] >= args.target and row["speedup_batch"] >= args.speedup
                                   and row["speedup_single"] >= args.speedup)
    return row, found


def compare(name: str, x: np.ndarray, q: np.ndarray, args) -> list[dict]:
    """Exact first (its answers are the truth), then the product's choice (or ``--force``), then ``--also``."""
    n, d = x.shape
    exact, truth = evaluate(name, x, q, "Flat", None, None, args, "exact")
    rows = [exact]
    chosen = choose_index(n, d, int(args.memory_budget_gb * 2**30))[0]
    todo = [(args.force or chosen, "forced" if args.force else "chosen")]
    todo += [(f, "also") for f in (args.also.split(";") if args.also else []) if f]
    for factory, role in todo:
        if factory != "Flat":
            rows.append(evaluate(name, x, q, factory, truth, exact, args, role)[0])
    exact["chosen"] = chosen == "Flat"
    return rows


# ---------------------------------------------------------------------------------------------- real embeddings
def open_bench_encoder(model: str):
    """``random`` → a random-init encoder of the demo's shape, exported to a temporary bundle; a directory → that
    bundle; anything else → a tag in the model store."""
    from serving.contract.encoder import OnnxEncoder

    if model == "random":
        import torch

        from training.config import preset
        from training.export import export_to_temp
        from training.networks import build_encoder

        torch.manual_seed(0)
        bundle, _ = export_to_temp(build_encoder(preset("fmnist-demo").encoder).eval())
        return OnnxEncoder(bundle)
    if Path(model).is_dir():
        return OnnxEncoder(model)
    from clients.workflows.indexing import open_encoder

    return open_encoder(model)


def augmented(images: np.ndarray, seed: int) -> np.ndarray:
    """BYOL view T of the demo preset (crops of 30-100 %, flip, brightness/contrast jitter) of uint8 NHWC images.

    Saturation, hue and grayscale change nothing on gray images and are switched off (hue is the costly op); one
    torch thread, so the data preparation does not fight ONNX Runtime for the cores (it is not what is timed)."""
    import dataclasses

    import torch

    from training.augment import apply_view, sample_view_params, to_float_nchw
    from training.config import preset

    torch.set_num_threads(1)
    view = dataclasses.replace(preset("fmnist-demo").augment.view1, saturation=0.0, hue=0.0, grayscale_p=0.0)
    size = images.shape[1]
    g = torch.Generator().manual_seed(seed)
    x = to_float_nchw(torch.from_numpy(images))
    out = apply_view(x, sample_view_params(view, len(x), size, size, g), size)
    return (out.permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8).numpy()


def fmnist_embeddings(args) -> tuple[np.ndarray, np.ndarray, str]:
    """``args.real`` vectors (train images, then augmented copies) and ``args.queries`` test-image queries."""
    from tqdm import tqdm

    from serving.contract.sources import load_fashion_mnist

    enc = open_bench_encoder(args.model)
    key = enc.manifest.onnx_sha256[:16] or enc.version  # the graph's hash: a re-export of the same weights hits
    cache = Path(args.cache) / f"fmnist-{key}-{args.real}.npy"
    train, test = load_fashion_mnist(None, "train").images, load_fashion_mnist(None, "test").images
    q = enc.embed_many(test[:args.queries])
    if cache.is_file():
        return np.load(cache), q, enc.version
    parts, done, chunk = [enc.embed_many(train)], len(train), 8192
    with tqdm(total=args.real, initial=done, desc="embedding copies", unit="img", file=sys.stderr) as bar:
        while done < args.real:
            take = min(chunk, args.real - done)
            picks = np.arange(done, done + take) % len(train)
            parts.append(enc.embed_many(augmented(train[picks], seed=done)))
            done += take
            bar.update(take)
    x = np.concatenate(parts)[:args.real]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    return x, q, enc.version


# ---------------------------------------------------------------------------------------------- main
COLS = ["dataset", "n", "role", "factory", "params", "heldout_recall", "recall_at_10", "build_s", "batch_qps",
        "single_qps", "speedup_batch", "speedup_single", "meets_target", "memory_mb"]


def print_table(rows: list[dict], load: dict) -> None:
    print(" | ".join(COLS))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in COLS))
    print(load_line(load))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10k,100k,1M", help="sphere-mixture sizes ('' for none)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time with 1 FAISS thread")
    ap.add_argument("--repeats", type=int, default=3, help="batch timings per index and thread count (median)")
    ap.add_argument("--threads", type=int, default=cores(), help="OpenMP threads for batched search (default all)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.95, help="recall@k the build tunes for (and the goal)")
    ap.add_argument("--speedup", type=float, default=10.0, help="speed-up over exact the goal asks for")
    ap.add_argument("--memory-budget-gb", type=float, default=DEFAULT_MEMORY_BUDGET / 2**30)
    ap.add_argument("--spread", type=float, default=1.0, help="within-cluster (low-rank) spread, centre norm 1")
    ap.add_argument("--noise", type=float, default=0.3, help="isotropic noise norm")
    ap.add_argument("--force", default=None, help="compare exact with this factory instead of the chosen one")
    ap.add_argument("--also", default="", help="more factories to build and tune, ';'-separated (exploration)")
    ap.add_argument("--real", type=parse_size, default=0, help="Fashion-MNIST embeddings to index (e.g. 1M)")
    ap.add_argument("--model", default="latest", help="bundle tag, bundle directory, or 'random'")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "byol-index-bench"))
    ap.add_argument("--out", default=str(RESULTS))
    add_load_args(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("faiss.loader", "onnxscript", "onnx_ir", "torch.onnx"):  # their INFO lines would bury the progress
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rows: list[dict] = []
    with recorded_load(strict=args.strict, limit=args.max_load) as load:
        info = machine(faiss=__import__("faiss").__version__, threads=args.threads)
        for size in [parse_size(s) for s in args.sizes.split(",") if s]:
            clusters = max(10, size // 1000)
            x = sphere_mixture(size, args.dim, clusters, seed=0, spread=args.spread, noise=args.noise)
            q = sphere_mixture(args.queries, args.dim, clusters, seed=1, spread=args.spread, noise=args.noise)
            rows += compare("sphere-mixture", x, q, args)
            del x
        if args.real:
            x, q, version = fmnist_embeddings(args)
            rows += compare(f"fashion-mnist+aug:{version}", x, q, args)
    print_table(rows, load)
    out = {"benchmark": "index_search", "rows": rows, "load": load, "machine": info,
           "args": {k: v for k, v in vars(args).items() if k not in ("out", "cache")},
           "data": {"generator": "sphere_mixture", "dim": args.dim, "rank": 16, "spread": args.spread,
                    "noise": args.noise, "clusters": "max(10, n/1000)"},
           "method": "batch: median of --repeats, better of --threads and 1 thread, same for every index; single: "
                     "1 thread, one query per call; recall on queries not used for tuning"}
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
