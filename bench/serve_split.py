"""The split service (embedding workers + one index process) side by side with the BentoML floor and with the single
process it replaced: what do the extra workers buy, and what does the hop to the index service cost?

(1) ``POST /embed``, one image a request, ``--concurrency`` clients, at each of ``--sizes`` (28 px: the demo's
    ``fmnist-demo`` encoder; 224 px: an ImageNet-stem ResNet-18; random init): the split service
    (``serving.service:ByolEmbed`` + ``serving.index_service:ByolIndex``) with ``BYOL_EMBED_WORKERS`` = each of
    ``--workers``, against the plain BentoML no-op taking the same upload (``bench.serve_throughput:NoopFloor``,
    the framework's per-request floor); at the first size also the single process of ``--baseline-ref``;
(2) ``POST /search`` (k = 10, one image a request) at the first size: the split service with the first of
    ``--workers`` against the single process of ``--baseline-ref`` (commit 0b82e4c: everything in one BentoML
    worker), served from a ``git worktree`` of that commit, both holding an equal exact (Flat) index of
    ``--index-size`` random unit vectors built with the repository's own ``index.durable.DurableIndex``; at
    ``--concurrency`` clients and at 1 (pure latency: the hop's cost in milliseconds).

Requests/s, p50/p99 latency, non-200 answers, and the ratios: each /embed to the floor, the workers to each other,
the split /search to the single process. All servers are up at once and every phase runs in ``--rounds`` short
bursts in turn with the others (``bench.serve_throughput.run_phases``), so a change in the machine's load hits each
phase alike; the load generator (keep-alive connections writing requests built once) shares the cores with the
servers. Each server has its own ``BYOL_HOME`` (an index directory is opened with a write lock) and they share one
read-only model store. Before measuring, the split and the single process must give the same top-10 ids for one
query; after it, each server's log is scanned for tracebacks, errors and 5xx answers (reported with their lines).
The machine's load before/after and the CPU other processes used are recorded (``bench/machine.py``); a busy run is
flagged, and refused with ``--strict``.

    .venv/bin/python bench/serve_split.py [--sizes 28,224] [--workers 1,2] [--seconds 10] [--rounds 5] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if __name__ == "__main__":  # a private model store for the run, before bentoml is imported
    from bench.machine import private_store

    private_store("byol-bench-split-")

from bench.serve_throughput import (  # noqa: E402
    EDGE_ENV,
    Phase,
    bench_logging,
    images_for,
    multipart_body,
    run_phases,
    size_config,
    upload_for,
)

RESULTS = REPO / "bench" / "results" / "serve_split.json"
BASELINE_REF = "0b82e4c"
WORKER_HEADER = "x-byol-worker"  # what the split service's /search answers carry (serving.service), the old did not
K = 10  # /search's default k (the body sends no k field)
log = logging.getLogger("bench.serve_split")


# ------------------------------------------------------------------------------------------------ set-up


def make_bundle(size: int, home: Path) -> tuple[str, object, dict]:
    """A random-init encoder of ``size`` px exported and registered in the run's model store → (tag, manifest,
    encoder config)."""
    import torch

    from serving.store import register_bundle
    from training.export import export_bundle
    from training.networks import build_encoder

    torch.manual_seed(0)
    cfg = size_config(size)
    log.info("%d px: exporting %s", size, cfg)
    bundle = home / f"bundle-{size}"
    manifest = export_bundle(build_encoder(cfg).eval(), bundle, meta={"note": "benchmark, random init"},
                             parity_images=images_for(size, 16))
    return register_bundle(bundle), manifest, cfg.to_dict()


def build_index(version: str, dim: int, n: int) -> Path:
    """An exact (Flat) durable index of ``n`` random unit vectors for ``version`` where a server under this
    ``BYOL_HOME`` looks for it (``serving.paths.index_dir``); ``$BYOL_HOME/indexes`` is copied into each server's
    home."""
    from index.durable import DurableIndex
    from serving import paths

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    metadata = [{"uri": f"bench://item/{i}.png", "label": f"class-{i % 10}"} for i in range(n)]
    directory = paths.index_dir(version)
    with DurableIndex.open(directory, dim=dim, encoder_version=version, factory="Flat", create=True) as index:
        index.add(x, metadata, version)
    return directory.parent


def baseline_tree(ref: str, root: Path) -> tuple[Path, str, bool]:
    """A detached worktree of ``ref`` → (its path, its full commit, whether this run made it and must remove it)."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    tree = root / f"byol-serve-split-{commit[:12]}"
    if (tree / "serving" / "service.py").is_file():
        return tree, commit, False
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO, check=True,
                   capture_output=True, text=True)
    return tree, commit, True


def remove_tree(tree: Path) -> None:
    done = subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode != 0:
        log.warning("could not remove the worktree %s: %s", tree, done.stderr.strip())


def head_state() -> dict:
    """The commit under test and what of ``serving/`` differs from it (read-only: no index refresh)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *a], cwd=REPO, capture_output=True, text=True).stdout

    return {"commit": git("rev-parse", "HEAD").strip(),
            "serving_uncommitted": git("status", "--porcelain", "--", "serving").splitlines()}


# ------------------------------------------------------------------------------------------------ servers


def server_specs(size: int, tag: str, args, tree: Path | None) -> dict[str, dict]:
    """name → how to start it: the split service per worker count, the floor, and (with ``tree``) the single
    process of the baseline commit."""
    from clients.local_server import command, free_port

    specs = {f"split_w{n}": {"env": {"BYOL_MODEL_TAG": tag, "BYOL_EMBED_WORKERS": str(n)}, "workers": n}
             for n in args.workers}
    specs["noop"] = {"env": {EDGE_ENV: "0"}, "service": "bench.serve_throughput:NoopFloor"}
    if tree is not None:
        # clients.local_server.start runs in this checkout (cwd, PYTHONPATH): `env -C` moves the baseline to its own
        port = free_port()
        specs["single"] = {"env": {"BYOL_MODEL_TAG": tag}, "port": port,
                           "cmd": ["env", "-C", str(tree), f"PYTHONPATH={tree}", *command(port)]}
    return specs


def start_servers(specs: dict[str, dict], run_home: Path, size: int, timeout: float) -> dict:
    """Start every server at once (each with its own ``BYOL_HOME`` holding a copy of the run's indexes, one shared
    model store); stop them all if one fails."""
    from clients import local_server as srv

    def one(name: str, spec: dict):
        home = run_home / "servers" / f"{size}-{name}"
        if (run_home / "indexes").is_dir():
            shutil.copytree(run_home / "indexes", home / "indexes")
        home.mkdir(parents=True, exist_ok=True)
        env = {**spec["env"], "BYOL_HOME": str(home), "BENTOML_HOME": os.environ["BENTOML_HOME"]}
        return srv.start(env, timeout=timeout, service=spec.get("service", srv.SERVICE), cmd=spec.get("cmd"),
                         port=spec.get("port"))

    servers, failures = {}, []
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = {name: pool.submit(one, name, spec) for name, spec in specs.items()}
        for name, future in futures.items():
            try:
                servers[name] = future.result()
            except Exception as exc:
                failures.append(f"{name}: {exc}")
    if failures:
        stop_servers(servers)
        raise RuntimeError("a server did not start:\n" + "\n".join(failures))
    return servers


def stop_servers(servers: dict) -> None:
    for s in servers.values():
        s.stop()


def wait_workers(url: str, expected: int, timeout: float = 60.0) -> dict:
    """The split service's ``/info`` once the index service counts ``expected`` live embedding workers (or the
    timeout)."""
    import httpx

    deadline, info = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        try:
            info = httpx.get(url + "/info", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            info = {}
        if len(info.get("workers") or {}) >= expected:
            break
        time.sleep(0.25)
    return info


def tree_memory(server) -> dict:
    """Processes of a server (main + workers) and their summed RSS in MB (from /proc)."""
    from clients.local_server import descendants, rss_kb

    pids = [server.proc.pid, *descendants(server.proc.pid)]
    return {"processes": len(pids), "rss_mb": round(rss_kb(pids) / 1024, 1)}


PROBLEMS = ("Traceback", "ERROR", "Exception", "status=5", "Killed", "exited")


def log_problems(server, measured: int, limit: int = 12) -> dict:
    """Lines of a server's log that look like trouble (tracebacks, errors, 5xx answers, dead workers): those written
    while it was up (the first ``measured`` characters: start, checks, phases) and those written while it stopped."""
    text = server.log()

    def found(part: str) -> list[str]:
        return [line for line in part.splitlines() if any(p in line for p in PROBLEMS)]

    up, stopping = found(text[:measured]), found(text[measured:])
    return {"count": len(up), "lines": up[:limit], "at_stop_count": len(stopping), "at_stop_lines": stopping[:limit],
            "log": str(server.log_path)}


def check_search(urls: dict[str, str], data: bytes) -> dict:
    """One /search to each server: the top-k ids must agree (equal index, same encoder) and only the split service
    names its worker."""
    import httpx

    answers = {}
    for name, url in urls.items():
        r = httpx.post(url + "/search", files={"image": ("q.png", data, "image/png")}, timeout=60)
        r.raise_for_status()
        answers[name] = {"ids": [hit["id"] for hit in r.json()["results"]], "worker": r.headers.get(WORKER_HEADER)}
    ids = {tuple(a["ids"]) for a in answers.values()}
    if len(ids) != 1 or len(next(iter(ids))) != K:
        raise RuntimeError(f"the servers disagree on /search (not an equal index?): {answers}")
    if answers["single"]["worker"] is not None or any(a["worker"] is None for n, a in answers.items()
                                                       if n != "single"):
        raise RuntimeError(f"the single process answers like the split service (is the worktree served?): {answers}")
    return {"same_top_ids": True, "workers": {n: a["worker"] for n, a in answers.items()}}


# ------------------------------------------------------------------------------------------------ one size


def run_size(size: int, args, run_home: Path, tree: Path | None) -> dict:
    """Bundle (and at the search size, the index) for ``size``; its servers up at once; the phases interleaved."""
    tag, manifest, cfg = make_bundle(size, run_home)
    searching = tree is not None
    if searching:
        build_index(manifest.version, manifest.embedding_dim, args.index_size)
    data, _ = upload_for(size)
    specs = server_specs(size, tag, args, tree)
    servers = start_servers(specs, run_home, size, args.start_timeout)
    try:
        out = measure(size, args, specs, servers, data, searching)
    finally:
        measured = {name: len(s.log()) for name, s in servers.items()}
        stop_servers(servers)
        problems = {name: log_problems(s, measured[name]) for name, s in servers.items()}
        for name, found in problems.items():
            if found["count"]:
                log.warning("%d px %s: %d log lines look like trouble, e.g.\n%s", size, name, found["count"],
                            "\n".join(found["lines"][:5]))
    for name, found in problems.items():
        out["servers"][name]["log_problems"] = found
    return {"size": size, "encoder": cfg, "version": manifest.version, "dim": manifest.embedding_dim, **out}


def measure(size: int, args, specs: dict, servers: dict, data: bytes, searching: bool) -> dict:
    """The phases of one size on its running servers, and what the servers say of themselves afterwards."""
    import httpx

    url = {name: s.url for name, s in servers.items()}
    seen = {name: len(wait_workers(url[name], spec["workers"]).get("workers") or {})
            for name, spec in specs.items() if "workers" in spec}
    out: dict = {"upload_bytes": len(data), "workers_seen": seen}
    first = f"split_w{args.workers[0]}"
    if searching:
        out["index_size"] = args.index_size
        out["search_check"] = check_search({first: url[first], "single": url["single"]}, data)
    one, c = multipart_body("image", data, 1), args.concurrency
    phases = {f"embed_{name}": Phase(url[name], "/embed", one, 1, c) for name in specs if name.startswith("split")}
    if searching:
        phases["embed_single"] = Phase(url["single"], "/embed", one, 1, c)
    phases["embed_noop_floor"] = Phase(url["noop"], "/embed", one, 1, c)
    if searching:
        phases |= {f"search_{first}": Phase(url[first], "/search", one, 1, c),
                   "search_single": Phase(url["single"], "/search", one, 1, c),
                   f"search_{first}_c1": Phase(url[first], "/search", one, 1, 1),
                   "search_single_c1": Phase(url["single"], "/search", one, 1, 1)}
    out["phases"] = asyncio.run(run_phases(phases, args.seconds, args.rounds))
    out["ratios"] = ratios(out["phases"], args.workers)
    out["servers"] = {}
    for name, s in servers.items():
        row = {"env": specs[name]["env"], **tree_memory(s)}
        if name != "noop":
            info = httpx.get(s.url + "/info", timeout=30).json()
            row |= {"batching": info.get("batching"), "live_workers": info.get("workers")}
        out["servers"][name] = row
    return out


def ratios(p: dict, workers: list[int]) -> dict:
    rps = {k: v["requests_per_s"] for k, v in p.items()}
    out = {f"embed_w{n}_over_floor": rps[f"embed_split_w{n}"] / rps["embed_noop_floor"] for n in workers}
    if len(workers) > 1:
        out |= {f"embed_w{n}_over_w{workers[0]}": rps[f"embed_split_w{n}"] / rps[f"embed_split_w{workers[0]}"]
                for n in workers[1:]}
    if "embed_single" in p:
        n = workers[0]
        out |= {f"embed_w{n}_over_single": rps[f"embed_split_w{n}"] / rps["embed_single"],
                "embed_single_over_floor": rps["embed_single"] / rps["embed_noop_floor"]}
        for suffix in ("", "_c1"):
            split, single = p[f"search_split_w{n}{suffix}"], p[f"search_single{suffix}"]
            out[f"search{suffix}_split_over_single_rps"] = split["requests_per_s"] / single["requests_per_s"]
            out[f"search{suffix}_split_over_single_p50"] = split["p50_ms"] / single["p50_ms"]
            out[f"search{suffix}_split_over_single_p99"] = split["p99_ms"] / single["p99_ms"]
            out[f"search{suffix}_hop_p50_ms"] = split["p50_ms"] - single["p50_ms"]
    return out


# ------------------------------------------------------------------------------------------------ report


def table(results: list[dict], load: dict, info: dict, baseline: dict, head: dict) -> str:
    from bench.machine import cpu_line, load_line

    dirty = " + uncommitted serving/" if head["serving_uncommitted"] else ""
    rows = [f"split service ({head['commit'][:7]}{dirty}) vs the single process of "
            f"{baseline['ref']} ({baseline['commit'][:7]}) vs the BentoML no-op floor",
            "size  phase                       clients     req/s    p50 ms    p99 ms  non-200"]
    for r in results:
        for name, v in r["phases"].items():
            rows.append(f"{r['size']:>4}  {name:<26}{v['concurrency']:>8}  {v['requests_per_s']:>8.1f}  "
                        f"{v['p50_ms']:>8.2f}  {v['p99_ms']:>8.2f}  {v['errors']:>7}")
    rows.append("")
    for r in results:
        rows.append(f"{r['size']} px ratios (req/s unless named; hop = split p50 - single p50):")
        for name, value in r["ratios"].items():
            unit = " ms" if name.endswith("_ms") else ""
            rows.append(f"  {name:<38}{value:>8.2f}{unit}")
        rows.append("  servers: " + ", ".join(
            f"{n} {s['processes']} proc {s['rss_mb']:.0f} MB" + (f", {len(s['live_workers'] or {})} live workers"
                                                                  if "live_workers" in s and n != "single" else "")
            for n, s in r["servers"].items()))
        for n, s in r["servers"].items():
            found = s.get("log_problems") or {}
            if found.get("count"):
                rows.append(f"  ** {n}: {found['count']} log lines look like trouble ({found['log']}), e.g. **")
                rows += [f"     {line[:200]}" for line in found["lines"][:3]]
            if found.get("at_stop_count"):
                rows.append(f"  {n}: {found['at_stop_count']} such lines while stopping, e.g. "
                            f"{found['at_stop_lines'][0][:160]}")
    rows.append(cpu_line(info["cpu"]))
    rows.append(load_line(load))
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.machine import add_load_args

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="28,224", help="input sizes; /search and the single process at the first")
    p.add_argument("--workers", default="1,2", help="BYOL_EMBED_WORKERS of each split server; /search on the first")
    p.add_argument("--seconds", type=float, default=10.0, help="time of each phase, all rounds together")
    p.add_argument("--rounds", type=int, default=5, help="bursts each phase is cut into, taken in turn")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent single-image clients")
    p.add_argument("--baseline-ref", default=BASELINE_REF, help="the single-process commit /search is compared with")
    p.add_argument("--index-size", type=int, default=10_000, help="random unit vectors in each server's Flat index")
    p.add_argument("--start-timeout", type=float, default=240.0, help="seconds for all servers of a size to start")
    p.add_argument("--out", default=str(RESULTS))
    add_load_args(p)
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.workers = [int(w) for w in args.workers.split(",") if w]
    if not args.sizes or not args.workers or min(args.workers) < 1:
        p.error("--sizes and --workers need at least one value each; workers >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    import bentoml
    import faiss
    import onnxruntime

    from bench.machine import machine, recorded_load
    from serving.contract.atomic import atomic_write_json

    args = parse_args(argv)
    bench_logging()
    home = Path(os.environ["BYOL_HOME"])
    tree, made = None, False
    try:
        with recorded_load(strict=args.strict, limit=args.max_load) as load:
            info = machine(bentoml=bentoml.__version__, onnxruntime=onnxruntime.__version__, faiss=faiss.__version__,
                           note="the load generator shares the cores with the servers")
            tree, commit, made = baseline_tree(args.baseline_ref, Path(tempfile.gettempdir()))
            baseline, head = {"ref": args.baseline_ref, "commit": commit}, head_state()
            results = [run_size(size, args, home, tree if i == 0 else None) for i, size in enumerate(args.sizes)]
    finally:
        if made:
            remove_tree(tree)
        shutil.rmtree(home, ignore_errors=True)  # the run's private model store, indexes and server homes
    print(table(results, load, info, baseline, head))
    doc = {"benchmark": "serve_split", "machine": info, "load": load, "baseline": baseline, "head": head,
           "args": {k: v for k, v in vars(args).items() if k != "out"},
           "env": {k: os.environ[k] for k in ("BYOL_ORT_THREADS", "BYOL_FAISS_THREADS", "BYOL_FOLLOW_S")
                   if k in os.environ},
           "results": results,
           "method": "all servers of a size up at once, phases interleaved in --rounds bursts "
                     "(bench.serve_throughput.run_phases); load generator: keep-alive HTTP/1.1 connections writing "
                     "requests built once, sharing the cores; floor: bench.serve_throughput:NoopFloor without the "
                     "edge; single: --baseline-ref served from a git worktree; each server its own BYOL_HOME with a "
                     "copy of one Flat index of --index-size random unit vectors, one shared model store",
           "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_json(args.out, doc)
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
