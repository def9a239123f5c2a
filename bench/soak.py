"""Soak: a real server under mixed traffic and hot swaps — does anything get lost, come back, or leak?

10,000 requests at concurrency 32 mixing /embed, /search, /index/add and /index/remove (by URI, the key stable across
versions), while /admin/reload swaps between two versions every 2 s. Checks, printed as a table and written to
``bench/results/soak.json``:

* errors: every answer other than 2xx and 503 (a 503 + Retry-After is the server saying "busy", allowed);
* lost adds: acknowledged adds not found (top-1 by their own image) in the version served at the end, nor after one
  more reload to the other version; removed items back: acknowledged removals found again;
* memory: the RSS (from /proc) of the service's processes together — the embedding worker(s) and the index service —
  at the end vs a *fresh* server started on the same data (the same
  ``BYOL_HOME`` after the soak: every acknowledged add in its index and collection), warmed with 1,000 embed/search
  requests and two swaps, both read right after a swap has completed (a swap releases the old version's memory);
  allowed +10%; and vs the worker's own RSS after warm-up (the first swap after 10% of the requests), allowed +10%.
  Why both: a fifth of the requests are adds, and each add legitimately grows the index and the collection held in
  memory, so over a longer soak the warm-up comparison would fail a worker that leaks nothing; the fresh worker
  holds the same data and no history, so what the soaked worker holds beyond it is what traffic and swaps left;
* the machine's load average before and after (``os.getloadavg``); a run started with load > 1.5 is flagged busy.

    .venv/bin/python bench/soak.py [--requests 10000] [--concurrency 32] [--reload-every 2]

Everything runs in a private ``BYOL_HOME`` (deleted at the end). The encoder is the fmnist-demo shape, random init
(what is measured is the service, not the model's quality); the index holds 2,000 Fashion-MNIST test images.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "soak.json"
TOKEN = "soak-token-of-16-chars"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIX = {"embed": 0.4, "search": 0.3, "add": 0.2, "remove": 0.1}
log = logging.getLogger("bench.soak")


def setup(home: Path) -> tuple[str, str]:
    """Two versions of one encoder (A, and B: the same weights under another version), each with an index."""
    import torch

    from clients.workflows import indexing
    from serving.store import register_bundle
    from training.export import export_bundle
    from training.networks import EncoderConfig, build_encoder

    torch.manual_seed(0)
    cfg = EncoderConfig(arch="resnet10", stem="small-s2", width=32, input_size=28, mean=(0.286,) * 3,
                        std=(0.353,) * 3)
    rng = np.random.default_rng(0)
    a = export_bundle(build_encoder(cfg).eval(), home / "bundle-a", meta={"note": "soak, random init"},
                      parity_images=rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8))
    register_bundle(home / "bundle-a")
    shutil.copytree(home / "bundle-a", home / "bundle-b")
    manifest = json.loads((home / "bundle-b" / "manifest.json").read_text())
    manifest["version"] = b = a.version[:-8] + "0000b0b0"
    (home / "bundle-b" / "manifest.json").write_text(json.dumps(manifest))
    register_bundle(home / "bundle-b")
    source = _source(home)
    indexing.build(indexing.BuildConfig(model=a.version, data=source, split="test", limit=2000, progress=False))
    indexing.build(indexing.BuildConfig(model=b, from_collection=True, progress=False))
    return a.version, b


def _source(home: Path) -> str:
    if Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file():
        return "fashion-mnist"
    from serving.contract.image import encode_png

    folder = home / "images"  # no dataset: 2,000 random images
    if folder.is_dir():
        return str(folder)
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2000):
        (folder / f"{i:04d}.png").write_bytes(encode_png(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)))
    return str(folder)


def worker_rss_mb(server) -> float:
    """What the service holds: the RSS of its processes together (embedding workers + the index service), MB."""
    from clients.local_server import rss_kb, service_processes

    return rss_kb(service_processes(server)) / 1024


class Load:
    """The traffic, the acknowledged writes, and what came back."""

    def __init__(self, args, server, queries: list[bytes]) -> None:
        self.args, self.server, self.queries = args, server, queries
        self.rng = random.Random(7)
        self.sent = 0
        self.status: dict[str, dict[str, int]] = {k: {} for k in [*MIX, "reload"]}
        self.latency: dict[str, list[float]] = {k: [] for k in [*MIX, "reload"]}
        self.errors: list[str] = []
        self.added: dict[str, bytes] = {}  # uri → image of every acknowledged add
        self.removed: set[str] = set()
        self.rss_warm = None
        self.rss_series: list[tuple[int, float]] = []  # (requests sent, RSS MB of the service processes) after swaps
        self.done = asyncio.Event()

    def note(self, kind: str, code, started: float, text: str = "") -> None:
        self.status[kind][str(code)] = self.status[kind].get(str(code), 0) + 1
        self.latency[kind].append(time.perf_counter() - started)
        if code != 503 and not (isinstance(code, int) and 200 <= code < 300):
            self.errors.append(f"{kind} {code} {text[:200]}")

    async def one(self, http, kind: str) -> None:
        started = time.perf_counter()
        try:
            if kind in ("embed", "search"):
                files = {"image": ("q.png", self.rng.choice(self.queries))}
                r = await http.post(f"/{kind}", files=files, data={"k": "5"} if kind == "search" else None)
            elif kind == "add":
                image = _random_png(self.rng)
                r = await http.post("/index/add", headers=AUTH, files=[("images", ("a.png", image))])
                if r.status_code == 200:
                    self.added["sha256:" + hashlib.sha256(image).hexdigest()] = image
            else:
                live = [u for u in self.added if u not in self.removed]
                if not live:
                    return await self.one(http, "embed")
                uri = self.rng.choice(live)
                r = await http.post("/index/remove", headers=AUTH, json={"uris": [uri]})
                if r.status_code == 200:
                    self.removed.add(uri)
        except Exception as exc:  # a dropped connection counts as an error
            return self.note(kind, type(exc).__name__, started, str(exc))
        self.note(kind, r.status_code, started, r.text)

    async def client(self, http) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        while self.sent < self.args.requests:
            self.sent += 1
            await self.one(http, self.rng.choices(kinds, weights)[0])

    async def reloader(self, http, versions: list[str]) -> None:
        n = 0
        while not self.done.is_set():
            try:
                await asyncio.wait_for(self.done.wait(), self.args.reload_every)
                return
            except TimeoutError:
                pass
            n += 1
            started = time.perf_counter()
            try:
                r = await http.post("/admin/reload", headers=AUTH, json={"version": versions[n % 2]})
                self.note("reload", r.status_code, started, r.text)
                self.rss_series.append((self.sent, round(worker_rss_mb(self.server), 1)))
                if self.rss_warm is None and self.sent >= self.args.requests // 10:
                    self.rss_warm = self.rss_series[-1][1]  # measured right after a swap, as at the end
            except Exception as exc:
                self.note("reload", type(exc).__name__, started, str(exc))


def _random_png(rng: random.Random) -> bytes:
    from serving.contract.image import encode_png

    return encode_png(np.frombuffer(rng.randbytes(28 * 28 * 3), np.uint8).reshape(28, 28, 3))


async def verify(url: str, load: Load) -> dict:
    """Top-1 of each acknowledged add's own image: must be itself, unless it was removed (then never itself)."""
    import httpx

    lost, back = [], []
    sem = asyncio.Semaphore(16)

    async def check(http, uri: str, image: bytes) -> None:
        async with sem:
            r = await http.post("/search", files={"image": ("q.png", image)}, data={"k": "1"})
        hits = r.json()["results"] if r.status_code == 200 else []
        found = bool(hits) and hits[0]["metadata"]["uri"] == uri
        if uri in load.removed and found:
            back.append(uri)
        elif uri not in load.removed and not found:
            lost.append(uri)

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        version = (await http.get("/info")).json()["version"]
        await asyncio.gather(*(check(http, u, im) for u, im in load.added.items()))
    return {"version": version, "lost_adds": len(lost), "removed_back": len(back), "checked": len(load.added)}


async def run_load(args, server, versions: list[str], queries: list[bytes]) -> tuple[Load, float]:
    import httpx

    load = Load(args, server, queries)
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        swapper = asyncio.ensure_future(load.reloader(http, versions))
        await asyncio.gather(*(load.client(http) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - t0
        load.done.set()
        await swapper
    return load, elapsed


def summary(load: Load, elapsed: float, rss_end: float, rss_fresh: float, checks: list[dict], load_before, load_after,
            args) -> dict:
    pct = {k: {"p50_ms": float(np.percentile(v, 50) * 1e3), "p99_ms": float(np.percentile(v, 99) * 1e3)}
           for k, v in load.latency.items() if v}
    return {
        "requests": sum(len(v) for k, v in load.latency.items() if k != "reload"), "seconds": elapsed,
        "requests_per_s": sum(len(v) for k, v in load.latency.items() if k != "reload") / elapsed,
        "status": load.status, "latency": pct, "errors_other_than_503": len(load.errors),
        "error_samples": load.errors[:10], "refused_503": sum(s.get("503", 0) for s in load.status.values()),
        "reloads": sum(load.status["reload"].values()), "acknowledged_adds": len(load.added),
        "acknowledged_removes": len(load.removed),
        "lost_adds": max(c["lost_adds"] for c in checks), "removed_back": max(c["removed_back"] for c in checks),
        "checks": checks, "rss_mb": {"after_warmup": load.rss_warm, "end": rss_end, "fresh_same_data": rss_fresh,
                                     "growth": rss_end / load.rss_warm - 1, "over_fresh": rss_end / rss_fresh - 1,
                                     "after_each_swap": load.rss_series},
        "loadavg": {"before": load_before, "after": load_after, "busy_before": load_before[0] > 1.5},
        "pass": {"no_errors": not load.errors, "no_lost_adds": max(c["lost_adds"] for c in checks) == 0,
                 "no_removed_back": max(c["removed_back"] for c in checks) == 0,
                 "rss_within_10pct_of_warmup": rss_end <= 1.10 * load.rss_warm,
                 "rss_within_10pct_of_fresh": rss_end <= 1.10 * rss_fresh},
        "args": vars(args),
    }


def table(doc: dict) -> str:
    rows = [f"{doc['requests']} requests in {doc['seconds']:.1f} s ({doc['requests_per_s']:.0f}/s), "
            f"{doc['reloads']} reloads, load average {doc['loadavg']['before'][0]:.2f} → "
            f"{doc['loadavg']['after'][0]:.2f}{'  (BUSY machine)' if doc['loadavg']['busy_before'] else ''}",
            "route      answers (status: count)                     p50 ms   p99 ms"]
    for kind, counts in doc["status"].items():
        lat = doc["latency"].get(kind, {"p50_ms": float("nan"), "p99_ms": float("nan")})
        rows.append(f"{kind:<10} {json.dumps(counts):<42} {lat['p50_ms']:>7.1f}  {lat['p99_ms']:>7.1f}")
    rss = doc["rss_mb"]
    rows += [f"errors other than 503: {doc['errors_other_than_503']}   503s: {doc['refused_503']}",
             f"acknowledged adds {doc['acknowledged_adds']}, removes {doc['acknowledged_removes']}: "
             f"lost adds {doc['lost_adds']}, removed items back {doc['removed_back']} "
             f"(checked on {', '.join(c['version'] for c in doc['checks'])})",
             f"service RSS (embedding workers + index service) {rss['after_warmup']:.0f} MB after warm-up → "
             f"{rss['end']:.0f} MB at the end ({rss['growth'] * 100:+.1f} %; the adds grow the data held); a fresh "
             "server on the same data "
             f"{rss['fresh_same_data']:.0f} MB: the soaked one holds {rss['over_fresh'] * 100:+.1f} % more",
             "PASS" if all(doc["pass"].values()) else f"FAIL: {[k for k, v in doc['pass'].items() if not v]}"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--reload-every", type=float, default=2.0, help="seconds between two reloads")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    load_before = os.getloadavg()
    home = Path(tempfile.mkdtemp(prefix="byol-bench-soak-"))
    os.environ["BYOL_HOME"], os.environ["BENTOML_HOME"] = str(home), str(home / "bentoml")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    try:
        doc = soak(args, home, load_before)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(table(doc))
    from serving.contract.atomic import atomic_write_json

    atomic_write_json(args.out, doc)
    print(f"→ {args.out}")
    return 0 if all(doc["pass"].values()) else 1


def fresh_rss(a: str, b: str, queries: list[bytes], warm_requests: int = 1000) -> float:
    """RSS of a new worker on the data the soak left (same ``BYOL_HOME``), warmed with embed/search traffic and a swap
    each way, read right after the second swap — the state the soaked worker's end figure was read in."""
    import httpx

    from clients import local_server as srv

    server = srv.start({"BYOL_MODEL_TAG": a, "BYOL_ADMIN_TOKEN": TOKEN}, timeout=120)
    try:
        rng = random.Random(11)

        async def warm() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                async def one(i: int) -> None:
                    kind = "embed" if i % 2 else "search"
                    await http.post(f"/{kind}", files={"image": ("q.png", rng.choice(queries))})

                for start in range(0, warm_requests, 32):
                    await asyncio.gather(*(one(i) for i in range(start, min(start + 32, warm_requests))))

        asyncio.run(warm())
        for version in (b, a):
            httpx.post(server.url + "/admin/reload", headers=AUTH, json={"version": version},
                       timeout=120).raise_for_status()
        return worker_rss_mb(server)
    finally:
        server.stop()


def soak(args, home: Path, load_before) -> dict:
    import httpx

    from clients import local_server as srv
    from serving.contract.image import encode_png
    from serving.contract.sources import load_source

    a, b = setup(home)
    queries = [encode_png(im) for im in load_source(_source(home), "test", size=28).images[:200]]
    server = srv.start({"BYOL_MODEL_TAG": a, "BYOL_ADMIN_TOKEN": TOKEN}, timeout=120)
    try:
        load, elapsed = asyncio.run(run_load(args, server, [a, b], queries))
        checks = []
        for n in range(2):  # one more swap each way: each version must hold every acknowledged write
            served = httpx.get(server.url + "/info", timeout=30).json()["version"]
            r = httpx.post(server.url + "/admin/reload", headers=AUTH, json={"version": b if served == a else a},
                           timeout=120)
            r.raise_for_status()
            if n == 0:
                rss_end = worker_rss_mb(server)  # right after a swap, like the warm-up figure
            checks.append(asyncio.run(verify(server.url, load)))
    finally:
        server.stop()
    rss_fresh = fresh_rss(a, b, queries)
    doc = summary(load, elapsed, rss_end, rss_fresh, checks, load_before, os.getloadavg(), args)
    from bench.machine import cpu_info

    doc["machine"] = {"cpus": os.cpu_count(), "cpu": cpu_info(), "platform": platform.platform(),
                      "python": platform.python_version(),
                      "note": "the load generator shares the CPU with the server"}
    doc["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return doc


if __name__ == "__main__":
    sys.exit(main())
