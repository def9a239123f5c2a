"""What the three edge attacks of the issue cost a real server, measured on this CPU (``bench/results/edge_cost.json``).

1. **unknown-path GETs**: ``/metrics`` lines, one scrape's time (median of 3) and the embedding worker's RSS before
   and after ``--paths`` GETs to distinct unknown paths (each used to add its own set of Prometheus series);
2. **slow bodies**: ``--tricklers`` clients (more than the 64 in-flight slots) send headers declaring 100 kB and
   then a byte every 0.5 s; the latency and status of ``--probes`` whole ``/embed`` requests before and while they
   do, and what the tricklers got (408 at the body deadline, 503, or nothing);
3. **unknown POST**: a POST declaring 500 kB (under the JSON limit) and 1 GB to an unknown path, headers only: the
   answer and how long it took (``None``: nothing within 5 s, the server waiting for the body).

Plus the in-process cost of labelling a request by route (:func:`serving.metrics.route_label`, run on every
request) on a router shaped like the served one. With ``--baseline DIR`` (a checkout of the code before the fix,
e.g. ``git worktree add /tmp/before <commit>``) the same attacks run against it too, in one table. Bounds at their
defaults except ``BYOL_BODY_TIMEOUT_S`` (``--deadline``, 5 s) so the deadline shows within the run.

    .venv/bin/python bench/edge_cost.py [--baseline DIR] [--paths 5000] [--tricklers 80]   (~30 s a server)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if __name__ == "__main__":  # a private model store for the run, before bentoml is imported
    from bench.machine import private_store

    private_store("byol-bench-edge-")

RESULTS = REPO / "bench" / "results" / "edge_cost.json"
BOUNDARY = "edge-cost"
log = logging.getLogger("bench.edge_cost")


def worker_rss_mb(server) -> dict:
    """RSS (MB, from /proc) of the server's processes: its embedding worker(s) and all of them together."""
    from clients.local_server import descendants, rss_kb, service_processes

    embed = [pid for pid, name in service_processes(server).items() if name == "byol_embed"]
    everything = [server.proc.pid, *descendants(server.proc.pid)]
    return {"embed_worker_mb": round(rss_kb(embed) / 1024, 1), "all_mb": round(rss_kb(everything) / 1024, 1)}


async def scrape(http) -> tuple[int, float]:
    """/metrics: (lines, median seconds of 3 scrapes)."""
    times, lines = [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        r = await http.get("/metrics")
        times.append(time.perf_counter() - t0)
        lines = len(r.text.splitlines())
    return lines, round(statistics.median(times), 4)


async def unknown_gets(server, http, n: int, clients: int = 8) -> dict:
    before_lines, before_s = await scrape(http)
    before_rss = worker_rss_mb(server)
    t0 = time.perf_counter()
    codes: dict[int, int] = {}

    async def some(start: int) -> None:
        for i in range(start, n, clients):
            code = (await http.get(f"/scan-{i}/p{i % 13}")).status_code
            codes[code] = codes.get(code, 0) + 1

    await asyncio.gather(*(some(c) for c in range(clients)))
    sent_s = time.perf_counter() - t0
    after_lines, after_s = await scrape(http)
    return {"paths": n, "seconds_to_send": round(sent_s, 1), "answers": codes,
            "metrics_lines": [before_lines, after_lines], "scrape_s": [before_s, after_s],
            "rss_mb": [before_rss, worker_rss_mb(server)]}


def post_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


async def answer_of(reader, wait: float) -> tuple[int | None, float]:
    """Status of the first answer on ``reader`` within ``wait`` s (None: none came, or the connection closed)."""
    t0 = time.perf_counter()
    try:
        line = await asyncio.wait_for(reader.readline(), wait)
        return (int(line.split()[1]) if line.startswith(b"HTTP/") else None), time.perf_counter() - t0
    except (TimeoutError, ConnectionError, ValueError, IndexError):
        return None, time.perf_counter() - t0


async def trickler(port: int, hold: float, every: float = 0.5) -> tuple[int | None, float]:
    """Headers declaring 100 kB, a first few bytes, then a byte every ``every`` s until an answer or ``hold`` s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    writer.write(post_head("/embed", 100_000) + f"--{BOUNDARY}\r\n".encode())
    status = None
    try:
        while status is None and time.perf_counter() - t0 < hold:
            status, _ = await answer_of(reader, every)
            if status is None and not reader.at_eof():
                writer.write(b"x")
                await writer.drain()
            elif status is None:
                break
    except ConnectionError:
        pass
    finally:
        writer.close()
    return status, round(time.perf_counter() - t0, 2)


async def embed_latencies(http, image: bytes, n: int) -> dict:
    ms, codes = [], {}
    for _ in range(n):
        t0 = time.perf_counter()
        r = await http.post("/embed", files={"image": ("a.png", image)})
        ms.append((time.perf_counter() - t0) * 1000)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
    return {"p50_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1), "answers": codes}


async def slow_bodies(server, http, image: bytes, m: int, probes: int, deadline: int) -> dict:
    port = int(server.url.rsplit(":", 1)[1])
    quiet = await embed_latencies(http, image, probes)
    hold = deadline + 3.0
    tasks = [asyncio.ensure_future(trickler(port, hold)) for _ in range(m)]
    await asyncio.sleep(1.5)  # every trickler connected and holding whatever the edge gives it
    info = (await http.get("/info")).json().get("admission", {})
    during = await embed_latencies(http, image, probes)
    got = await asyncio.gather(*tasks)
    statuses: dict[str, int] = {}
    for status, _ in got:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    answered = [s for st, s in got if st == 408]
    return {"tricklers": m, "embed_quiet": quiet, "embed_during": during, "admission_during": info,
            "trickler_answers": statuses, "held_until_408_s": round(statistics.median(answered), 2)
            if answered else None, "held_at_most_s": hold}


async def unknown_post(server, declared: int, wait: float = 5.0) -> dict:
    port = int(server.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post_head("/wp-admin/upload.php", declared))
    await writer.drain()
    status, seconds = await answer_of(reader, wait)
    writer.close()
    return {"declared_bytes": declared, "status": status, "ms": round(seconds * 1000, 1) if status else None}


async def attack(server, args, image: bytes) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        await embed_latencies(http, image, 3)  # warm
        out = {"unknown_gets": await unknown_gets(server, http, args.paths)}
        log.info("unknown GETs: %s", out["unknown_gets"])
        out["slow_bodies"] = await slow_bodies(server, http, image, args.tricklers, args.probes, args.deadline)
        log.info("slow bodies: %s", out["slow_bodies"])
        out["unknown_post"] = [await unknown_post(server, d) for d in (500_000, 10**9)]
        log.info("unknown POST: %s", out["unknown_post"])
    return out


def label_cost_us(n: int = 20_000) -> dict:
    """Microseconds per :func:`serving.metrics.route_label` on a router shaped like the served one."""
    from _bentoml_impl.server.mount import PassiveMount
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.staticfiles import StaticFiles

    from serving import web
    from serving.metrics import route_label
    from serving.upload_guard import ROUTES

    async def nothing(request):
        raise AssertionError

    system = ["/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json"]
    app = Starlette(routes=[*(Route(p, nothing) for p in system), *(Route(p, nothing, methods=["POST"])
                                                                    for p in ROUTES), PassiveMount("/", web.app({}))])
    app.mount("/static_content", StaticFiles(directory=".", check_dir=False))
    out = {}
    for name, method, path in (("POST /embed", "POST", "/embed"), ("GET /items/7/thumbnail", "GET",
                                                                   "/items/7/thumbnail"),
                               ("GET /unknown", "GET", "/wp-login.php")):
        scope = {"type": "http", "method": method, "path": path, "app": app}
        t0 = time.perf_counter()
        for _ in range(n):
            route_label(scope)
        out[name] = round((time.perf_counter() - t0) / n * 1e6, 1)
    return out


def start(tag: str, args, baseline: Path | None = None):
    from clients import local_server as srv

    env = {"BYOL_MODEL_TAG": tag, "BYOL_BODY_TIMEOUT_S": str(args.deadline)}
    if baseline is None:
        return srv.start(env, timeout=180)
    port = srv.free_port()  # local_server runs in this checkout (cwd, PYTHONPATH): `env -C` moves it to the other
    return srv.start(env, timeout=180, port=port,
                     cmd=["env", "-C", str(baseline), f"PYTHONPATH={baseline}", *srv.command(port)])


def table(results: dict, load: dict, cost: dict) -> str:
    from bench.machine import load_line

    rows = [f"{'':34s}" + "".join(f"{name:>30s}" for name in results)]

    def row(label: str, fn) -> None:
        rows.append(f"{label:34s}" + "".join(f"{fn(r):>30s}" for r in results.values()))

    n = next(iter(results.values()))["unknown_gets"]["paths"]
    row(f"/metrics lines, {n:,} unknown GETs", lambda r: "{:,} -> {:,}".format(*r["unknown_gets"]["metrics_lines"]))
    row("one scrape (s)", lambda r: "{} -> {}".format(*r["unknown_gets"]["scrape_s"]))
    row("embed worker RSS (MB)", lambda r: "{} -> {}".format(*(x["embed_worker_mb"]
                                                                for x in r["unknown_gets"]["rss_mb"])))
    m = next(iter(results.values()))["slow_bodies"]["tricklers"]
    row("/embed quiet: p50 ms, answers", lambda r: _lat(r["slow_bodies"]["embed_quiet"]))
    row(f"/embed, {m} tricklers: p50, answers", lambda r: _lat(r["slow_bodies"]["embed_during"]))
    row("slots held (inflight/reading)", lambda r: "{}/{}".format(r["slow_bodies"]["admission_during"].get(
        "inflight"), r["slow_bodies"]["admission_during"].get("reading", "-")))
    row("trickler answers", lambda r: ", ".join(f"{k}: {v}" for k, v in r["slow_bodies"]["trickler_answers"].items()))
    row("trickler held until 408 (s)", lambda r: str(r["slow_bodies"]["held_until_408_s"]))
    for i, what in enumerate(("500 kB", "1 GB")):
        row(f"unknown POST, {what} declared", lambda r, i=i: "{} in {} ms".format(
            r["unknown_post"][i]["status"], r["unknown_post"][i]["ms"]) if r["unknown_post"][i]["status"]
            else "no answer in 5 s")
    rows.append("route_label (us a request): " + ", ".join(f"{k} {v}" for k, v in cost.items()))
    rows.append(load_line(load))
    return "\n".join(rows)


def _lat(d: dict) -> str:
    return f"{d['p50_ms']} ms, " + ", ".join(f"{k}: {v}" for k, v in d["answers"].items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.machine import add_load_args

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", type=Path, help="a checkout of the code before the fix, attacked the same way")
    p.add_argument("--paths", type=int, default=5000, help="distinct unknown paths to GET")
    p.add_argument("--tricklers", type=int, default=80, help="slow-body clients (the in-flight bound is 64)")
    p.add_argument("--probes", type=int, default=20, help="whole /embed requests timed before and during")
    p.add_argument("--deadline", type=int, default=5, help="BYOL_BODY_TIMEOUT_S of the servers")
    p.add_argument("--out", type=Path, default=RESULTS)
    add_load_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from bench.machine import machine, recorded_load
    from bench.serve_split import make_bundle
    from bench.serve_throughput import bench_logging
    from serving.contract.atomic import atomic_write_json
    from serving.contract.image import encode_png

    args = parse_args(argv)
    bench_logging()
    tag, _, _ = make_bundle(28, Path(os.environ["BYOL_HOME"]))
    image = encode_png(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8))
    servers = {"this checkout": None, **({f"baseline {args.baseline.name}": args.baseline} if args.baseline else {})}
    results = {}
    with recorded_load(args.strict, args.max_load) as load:
        cost = label_cost_us()
        for name, tree in servers.items():
            server = start(tag, args, tree)
            try:
                results[name] = asyncio.run(attack(server, args, image))
            finally:
                server.stop()
    print(table(results, load, cost))
    atomic_write_json(args.out, {"machine": machine(), "load": load, "args": {
        "paths": args.paths, "tricklers": args.tricklers, "probes": args.probes, "deadline_s": args.deadline,
        "baseline": str(args.baseline) if args.baseline else None}, "route_label_us": cost, "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
