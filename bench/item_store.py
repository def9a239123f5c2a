"""What the item store costs as the index grows: this checkout beside a baseline (the file layout before SQLite),
each at ``--sizes`` items of a 512-d exact (Flat) index built with ``byol index build --from-embeddings``.

Per tree and size, in a private ``BYOL_HOME`` and model store (one random-init ``fmnist-demo``-shaped encoder: its
vectors are 512-d), one after the other on a quiet machine:

* **build**: ``byol index build --from-embeddings OUT --factory Flat`` of a generated ``embed-folder`` output
  (random unit vectors, parquet rows of path/width/height/sha256), wall time and peak RSS of the command;
* **open**: ``DurableIndex.open`` read-only in a fresh process: seconds and the process's RSS beyond the vectors;
* **serve**: the real server (``clients.local_server``) on that store: seconds until ``/readyz``, the index service's
  RSS after 300 sequential ``/search`` (k=10) and after 100 sequential acknowledged ``/index/add`` (one new image
  each), each minus the vectors' own bytes (N × 512 × 4), per million items; latencies p50/p99 of both;
* **compaction**: in a fresh process, 10 items added and ``compact()`` timed, the bytes it wrote (``/proc/self/io``
  ``write_bytes``: what reached the storage layer, whatever wrote it) beside the FAISS file's own size;
* **conversion** (this checkout only): the baseline's store of that size opened by this checkout — the one-time
  upgrade — timed.

    .venv/bin/python bench/item_store.py [--sizes 100k,1M,5M] [--baseline 245a4ee] [--baseline-max 1M] [--strict]

(~10 min for 100k and 1M, ~25 more for 5M; 5M needs ~12 GB of memory and ~25 GB of disk.)

Writes ``bench/results/item_store.json`` (rows of each tree, the machine and its load) and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if __name__ == "__main__":  # a private model store for the run, before bentoml is imported
    from bench.machine import private_store

    private_store("byol-bench-store-")

RESULTS = REPO / "bench" / "results" / "item_store.json"
BASELINE_REF = "245a4ee"  # the last commit of the file layout (snapshot items.jsonl + wal.log)
DIM = 512
TOKEN = "bench-item-store-token"
log = logging.getLogger("bench.item_store")

OPEN_PROBE = """
import json, resource, sys, time
t0 = time.perf_counter()
from index.durable import DurableIndex
t1 = time.perf_counter()
ix = DurableIndex.open(sys.argv[1], read_only=sys.argv[2] == "ro")
t2 = time.perf_counter()
n = len(ix)
rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
print(json.dumps({"open_s": t2 - t1, "items": n, "rss_bytes": rss,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

COMPACT_PROBE = """
import json, sys, time
import numpy as np
from pathlib import Path
from index.durable import DurableIndex
def written():
    return int(dict(l.split(": ") for l in open("/proc/self/io").read().splitlines())["write_bytes"])
ix = DurableIndex.open(sys.argv[1])
x = np.random.default_rng(1).normal(size=(10, ix.dim)).astype(np.float32)
ix.add(x, [{"uri": f"bench://compact/{i}"} for i in range(10)], ix.encoder_version)
os_sync = __import__("os").sync
os_sync()
w0, t0 = written(), time.perf_counter()
ix.compact()
os_sync()
t1, w1 = time.perf_counter(), written()
faiss_bytes = max(f.stat().st_size for f in Path(sys.argv[1]).glob("snap-*/index.faiss"))
print(json.dumps({"compact_s": t1 - t0, "written_bytes": w1 - w0, "faiss_bytes": faiss_bytes}))
ix.close()
"""


def parse_size(s: str) -> int:
    s = s.strip().lower()
    return int(float(s[:-1]) * {"k": 1_000, "m": 1_000_000}[s[-1]]) if s[-1] in "km" else int(s)


def make_embeddings(out: Path, n: int, version: str, chunk: int = 200_000) -> Path:
    """An ``embed-folder`` output of ``n`` random unit 512-d vectors and their rows (cached by size)."""
    import pyarrow as pa

    from clients.workflows.embedding import write_embeddings

    if (out / "manifest.json").is_file():
        return out
    rng = np.random.default_rng(0)

    def blocks():
        for lo in range(0, n, chunk):
            x = rng.standard_normal((min(chunk, n - lo), DIM)).astype(np.float32)
            yield x / np.linalg.norm(x, axis=1, keepdims=True)

    table = pa.table({"path": [f"shop/{i // 1000:04d}/{i:08d}.jpg" for i in range(n)],
                      "width": pa.array(np.full(n, 224), pa.int32()), "height": pa.array(np.full(n, 224), pa.int32()),
                      "sha256": [f"{i:064x}" for i in range(n)]})
    manifest = {"encoder_version": version, "dim": DIM, "count": n, "folder": str(out.parent / "images"),
                "normalized": True, "files": {"embeddings": "embeddings.npy", "metadata": "metadata.parquet"}}
    write_embeddings(out, blocks(), n, DIM, table, manifest)
    return out


def tree_cmd(tree: Path, *args: str) -> list[str]:
    return ["env", "-C", str(tree), f"PYTHONPATH={tree}", sys.executable, *args]


def probe(cmd: list[str], env: dict) -> dict:
    """The JSON line a probe script prints last (it times itself)."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-6:])} failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_of(cmd: list[str], env: dict) -> tuple[float, str, int]:
    """Wall seconds, stdout and the peak RSS of the command's process tree (sampled from /proc every 50 ms)."""
    from clients.local_server import descendants, rss_kb

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, rss_kb([proc.pid, *descendants(proc.pid)]))
        except (KeyError, OSError):  # a process exiting between the listing and the read (no VmRSS any more)
            pass
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-6:])} failed: {stderr[-3000:]}")
    return time.perf_counter() - t0, stdout, peak * 1024


def percentiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"p50_ms": round(1000 * statistics.median(xs), 2), "p99_ms": round(1000 * xs[int(0.99 * (len(xs) - 1))], 2),
            "n": len(xs)}


def png(seed: int, size: int = 28) -> bytes:
    """A distinct small PNG per seed (an add of new bytes is a new item)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def traffic(port: int, searches: int, adds: int, size: int) -> dict:
    import httpx

    upload_for = png
    query = upload_for(0, size)
    out: dict = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        for _ in range(5 if searches else 0):  # warm-up
            (await http.post("/search", files={"image": ("q.png", query)}, data={"k": "10"})).raise_for_status()
        lat = []
        for _ in range(searches):
            t0 = time.perf_counter()
            r = await http.post("/search", files={"image": ("q.png", query)}, data={"k": "10"})
            lat.append(time.perf_counter() - t0)
            r.raise_for_status()
            assert len(r.json()["results"]) == 10
        if lat:
            out["search"] = percentiles(lat)
        lat = []
        for i in range(adds):
            t0 = time.perf_counter()
            r = await http.post("/index/add", headers={"Authorization": f"Bearer {TOKEN}"},
                                files=[("images", ("a.png", upload_for(1000 + i, size)))])
            lat.append(time.perf_counter() - t0)
            r.raise_for_status()
        if lat:
            out["add"] = percentiles(lat)
    return out


def index_rss(server) -> int:
    from clients.local_server import service_processes, status_kb

    pids = [p for p, name in service_processes(server).items() if "index" in name]
    return sum(status_kb(p, "VmRSS") for p in pids) * 1024


def measure(tree: Path, label: str, n: int, emb: Path, tag: str, version: str, root: Path, args) -> dict:
    from clients import local_server as srv

    home = root / f"{label}-{n}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {**os.environ, "BYOL_HOME": str(home), "BYOL_ADMIN_TOKEN": TOKEN}
    vec_bytes = n * DIM * 4
    row: dict = {"tree": label, "items": n, "vectors_bytes": vec_bytes}
    log.info("%s, %d items: build", label, n)
    row["build_s"], _, row["build_peak_rss_bytes"] = peak_of(
        tree_cmd(tree, "-m", "clients.cli", "index", "build", "--from-embeddings", str(emb), "--model", tag,
                 "--factory", "Flat", "--quiet"), env)
    os.sync()  # the build's writes reach the disk before anything is timed: no writeback under the measurements
    time.sleep(2)
    directory = home / "indexes" / version
    row["store_bytes"] = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    log.info("%s, %d items: open", label, n)
    opened = probe(tree_cmd(tree, "-c", OPEN_PROBE, str(directory), "ro"), env)
    row["open_s"], row["open_rss_beyond_vectors_bytes"] = opened["open_s"], opened["rss_bytes"] - vec_bytes
    log.info("%s, %d items: serve", label, n)
    port = srv.free_port()
    t0 = time.perf_counter()
    server = srv.start({"BYOL_HOME": str(home), "BYOL_MODEL_TAG": tag, "BYOL_ADMIN_TOKEN": TOKEN}, timeout=900,
                       port=port, cmd=["env", "-C", str(tree), f"PYTHONPATH={tree}", *srv.command(port)])
    try:
        row["ready_s"] = time.perf_counter() - t0
        row["rss_ready_bytes"] = index_rss(server)
        got = asyncio.run(traffic(port, args.searches, 0, 28))
        row["rss_after_search_bytes"] = index_rss(server)
        got.update({k: v for k, v in asyncio.run(traffic(port, 0, args.adds, 28)).items() if k == "add"})
        row["rss_after_add_bytes"] = index_rss(server)
        row.update(got)
    finally:
        server.stop()
    for key in ("rss_ready_bytes", "rss_after_search_bytes", "rss_after_add_bytes"):
        row[key.replace("_bytes", "_beyond_vectors_mb_per_m")] = round((row[key] - vec_bytes) / 2**20 / (n / 1e6), 1)
    log.info("%s, %d items: compaction", label, n)
    row.update(probe(tree_cmd(tree, "-c", COMPACT_PROBE, str(directory)), env))
    row["index_dir"] = str(directory)
    return row


def convert(n: int, old_dir: Path, root: Path) -> dict:
    """This checkout opening a store the baseline wrote (a copy): the one-time conversion."""
    copy = root / f"convert-{n}" / old_dir.name
    shutil.rmtree(copy.parent, ignore_errors=True)
    shutil.copytree(old_dir, copy)
    opened = probe(tree_cmd(REPO, "-c", OPEN_PROBE, str(copy), "rw"), os.environ.copy())
    shutil.rmtree(copy.parent, ignore_errors=True)
    return {"items": n, "convert_and_open_s": round(opened["open_s"], 2), "items_after": opened["items"]}


def mb(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def table(rows: list[dict], conversions: list[dict], load: dict) -> str:
    from bench.machine import load_line

    head = ["tree", "items", "build s", "open s", "ready s", "RSS-vec MB/M (ready, search, add)", "/search p50/p99",
            "/index/add p50/p99", "compact s", "compact MB (FAISS MB)"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join([
            r["tree"], f"{r['items']:,}", f"{r['build_s']:.0f}", f"{r['open_s']:.2f}", f"{r['ready_s']:.0f}",
            f"{r['rss_ready_beyond_vectors_mb_per_m']:,.0f}, {r['rss_after_search_beyond_vectors_mb_per_m']:,.0f}, "
            f"{r['rss_after_add_beyond_vectors_mb_per_m']:,.0f}",
            f"{r['search']['p50_ms']:.1f} / {r['search']['p99_ms']:.1f} ms",
            f"{r['add']['p50_ms']:.1f} / {r['add']['p99_ms']:.1f} ms", f"{r['compact_s']:.2f}",
            f"{mb(r['written_bytes'])} ({mb(r['faiss_bytes'])})"]))
    by_tree: dict[str, list[dict]] = {}
    for r in rows:
        by_tree.setdefault(r["tree"], []).append(r)
    for tree, rs in by_tree.items():  # the slope between sizes: what a million more items cost, fixed costs aside
        rs = sorted(rs, key=lambda r: r["items"])
        for a, b in zip(rs, rs[1:], strict=False):
            extra = (b["rss_after_add_bytes"] - a["rss_after_add_bytes"]) - (b["vectors_bytes"] - a["vectors_bytes"])
            lines.append(f"{tree}: {extra / 2**20 / ((b['items'] - a['items']) / 1e6):,.0f} MB per million items "
                         f"beyond the vectors, from {a['items']:,} to {b['items']:,} (RSS after the adds: "
                         f"{mb(a['rss_after_add_bytes'])} → {mb(b['rss_after_add_bytes'])} MB)")
    for c in conversions:
        lines.append(f"conversion of the baseline's {c['items']:,}-item store by this checkout: "
                     f"{c['convert_and_open_s']:.1f} s, {c['items_after']:,} items after")
    lines.append(load_line(load))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.machine import add_load_args, machine, recorded_load
    from bench.serve_split import baseline_tree, make_bundle
    from serving.contract.atomic import atomic_write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100k,1M,5M")
    p.add_argument("--baseline", default=BASELINE_REF, help="git ref of the file layout ('' to skip)")
    p.add_argument("--baseline-max", default="1M", help="the largest size the baseline is measured at (its build "
                   "holds every item as Python objects and a normalised copy of the vectors: 5M does not fit in "
                   "24 GB)")
    p.add_argument("--searches", type=int, default=300)
    p.add_argument("--adds", type=int, default=100)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "byol-bench-item-store")
    p.add_argument("--out", type=Path, default=RESULTS)
    add_load_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    root = Path(os.environ["BYOL_HOME"])
    tag, manifest, _ = make_bundle(28, root)
    version = manifest.version
    assert manifest.embedding_dim == DIM, manifest
    trees = [("this checkout", REPO)]
    made = None
    if args.baseline:
        base, commit, made = baseline_tree(args.baseline, Path(tempfile.mkdtemp(prefix="byol-store-base-")))
        trees.append((f"baseline {commit[:7]}", base))
    rows, conversions = [], []
    with recorded_load(strict=args.strict, limit=args.max_load) as load:
        for n in [parse_size(s) for s in args.sizes.split(",")]:
            emb = make_embeddings(args.cache / f"emb-{n}-{version}", n, version)
            got = {label: measure(tree, label.split()[0], n, emb, tag, version, root, args) for label, tree in trees
                   if label == trees[0][0] or n <= parse_size(args.baseline_max)}
            for label, r in got.items():
                rows.append({**r, "tree": label})
            if len(got) > 1:
                conversions.append(convert(n, Path(got[trees[1][0]]["index_dir"]), root))
            for label in got:
                shutil.rmtree(Path(got[label]["index_dir"]).parents[1], ignore_errors=True)
    if made:
        subprocess.run(["git", "worktree", "remove", "--force", str(trees[1][1])], cwd=REPO, check=False)
    text = table(rows, conversions, load)
    print(text)
    atomic_write_json(args.out, {"benchmark": "item_store", "machine": machine(), "load": load, "dim": DIM,
                                 "baseline": args.baseline, "rows": rows, "conversions": conversions})
    return 0


if __name__ == "__main__":
    sys.exit(main())
