"""Serving throughput, side by side in one run: where does an image's time go between the model and HTTP?

(a) PyTorch eager f_θ, batched                 — the training-side baseline (this script may import torch)
(b) ONNX Runtime batched (OnnxEncoder as served) — what the service runs; (b1) the same at batch 1
(c) POST /embed, N concurrent clients, one image a request (micro-batched server side)
(d) POST /embed_batch, 64 images a request, ``Accept: application/x-npy``; (d_json) the same answered in JSON
(e) a no-op endpoint taking the same upload on plain BentoML (``Path`` typed, bytes read, a small dict answered):
    the framework's own per-request floor (shared/ENVIRONMENT.md); (e_batch) the same for 64 images
(f) the same no-op behind the service's own edge (``UploadGuard``, the deadline middleware, the multipart hand-off
    of ``serving.multipart``): what any endpoint of this service stands on
at the demo size (28 px, the ``fmnist-demo`` encoder's shape) and a compute-bound size (224 px, ImageNet-stem
ResNet-18), random init (speed does not depend on the weights). Images/s, requests/s, p50/p99 latency, and the
ratios the issue sets targets for: (c)/(e) ≥ 0.90, (d)/(b) ≥ 0.50 at 28 px and ≥ 0.80 at 224 px, (b)/(a) ≥ 1.5 at
224 px.

Side by side means interleaved: all servers are up at once and every HTTP phase runs in ``--rounds`` short bursts,
in turn with the others (the model phases alternate the same way), so a change in the machine's load hits each
phase alike. The machine's load before/after and the CPU other processes used during the run are recorded
(``bench/machine.py``); a busy run is flagged, and refused with ``--strict``. ``--profile`` also records a py-spy
flame graph of the server's worker under (c) and (d) (``bench/results/serve_flame_<size>_<route>.svg``; needs
``py-spy``). Loopback only; the load generator (keep-alive connections writing requests built once) shares the
cores with the server.

    .venv/bin/python bench/serve_throughput.py [--sizes 28,224] [--seconds 6] [--concurrency 32] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if __name__ == "__main__":  # a private model store for the run, before bentoml is imported
    from bench.machine import private_store

    private_store("byol-bench-serve-")

import bentoml  # noqa: E402

from serving import http_helpers as h  # noqa: E402

RESULTS = REPO / "bench" / "results" / "serve_throughput.json"
VARIANTS = {"fp16": "encoder_fp16.onnx", "int8": "encoder_int8.onnx", "int8-dynamic": "encoder_int8_dynamic.onnx"}
EDGE_ENV = "BYOL_BENCH_NOOP_EDGE"  # set in the no-op server (f): it then stands behind the service's edge
NPY = "application/x-npy"
log = logging.getLogger("bench.serve")


@bentoml.service(name="noop_floor", workers=1)
class NoopFloor:
    """(e)/(f): the same multipart upload and ``Path`` typing as the real endpoints; reads the bytes and answers a
    small dict. No decode, no model. Behind the edge (f) the bytes come from the edge's parse, as in the service."""

    @bentoml.api(route="/embed")
    async def embed(self, image: Path, ctx: bentoml.Context = None) -> dict:
        datas = h.edge_uploads(ctx, "image") or [image.read_bytes()]
        return {"bytes": len(datas[0])}

    @bentoml.api(route="/embed_batch")
    async def embed_batch(self, images: list[Path], ctx: bentoml.Context = None) -> dict:
        datas = h.edge_uploads(ctx, "images") or [p.read_bytes() for p in images]
        return {"bytes": sum(map(len, datas))}


if os.environ.get(EDGE_ENV) == "1":  # what serving/service.py installs, for the no-op (f)
    from serving import deadline, metrics, multipart
    from serving.upload_guard import UploadGuard

    deadline.install()
    metrics.install_route_labels()
    multipart.install()
    NoopFloor.add_asgi_middleware(UploadGuard)


def demo_config():
    from training.config import preset

    return preset("fmnist-demo").encoder


def size_config(size: int):
    from training.networks import EncoderConfig

    if size == 28:
        return demo_config()
    return EncoderConfig(arch="resnet18", stem="imagenet", width=64, input_size=size)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def _figures(calls: int, per_call: int, seconds: float, lat: list[float], **extra) -> dict:
    return {"images_per_s": calls * per_call / seconds, "requests_per_s": calls / seconds,
            "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "calls": calls, **extra}


def time_interleaved(fns: dict, batches: dict, seconds: float, rounds: int) -> dict:
    """Each ``fns[name](batches[name])`` for ``seconds`` in all, in ``rounds`` turns alternating with the others."""
    for name, fn in fns.items():
        fn(batches[name])  # warm-up
    lat: dict[str, list[float]] = {n: [] for n in fns}
    spent = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            while not lat[name] or time.perf_counter() - t0 < seconds / rounds:
                s = time.perf_counter()
                fn(batches[name])
                lat[name].append(time.perf_counter() - s)
            spent[name] += time.perf_counter() - t0
    return {n: _figures(len(lat[n]), len(batches[n]), spent[n], lat[n], batch=len(batches[n])) for n in fns}


def multipart_body(field: str, payload: bytes, n: int) -> tuple[bytes, str]:
    """A client's multipart body with ``n`` copies of ``payload`` in ``field``, built once for the whole run."""
    boundary = "bench-boundary-7f3a"
    out = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{i}.png"\r\n'
                   f"Content-Type: image/png\r\n\r\n".encode() + payload + b"\r\n" for i in range(n))
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Phase:
    """One HTTP load: a route of one server, a body, how many clients; accumulates over bursts.

    The clients are plain keep-alive HTTP/1.1 connections writing a request built once and reading the answer
    (Content-Length or chunked): the load generator shares the cores with the server, and an HTTP library's own
    per-request cost (aiohttp: ~1.5 ms of CPU per 64-image request here) would be taken from the server's share."""

    def __init__(self, url: str, route: str, body: tuple[bytes, str], images: int, concurrency: int,
                 accept: str | None = None) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.route = host, int(port), route
        self.images, self.concurrency = images, concurrency
        head = (f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {body[1]}\r\n"
                f"Content-Length: {len(body[0])}\r\n" + (f"Accept: {accept}\r\n" if accept else "") + "\r\n")
        self.request = head.encode() + body[0]
        self.lat: list[float] = []
        self.errors, self.seconds = 0, 0.0

    async def _client(self, deadline: float) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            while time.perf_counter() < deadline:
                s = time.perf_counter()
                writer.write(self.request)
                status = await read_response(reader)
                self.errors += status != 200
                self.lat.append(time.perf_counter() - s)
        finally:
            writer.close()

    async def burst(self, seconds: float) -> None:
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(self._client(deadline) for _ in range(self.concurrency)))
        self.seconds += time.perf_counter() - t0

    def figures(self) -> dict:
        return _figures(len(self.lat), self.images, self.seconds, self.lat, errors=self.errors,
                        concurrency=self.concurrency, images_per_request=self.images)


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response off a keep-alive connection; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return int(lines[0].split()[1])


async def run_phases(phases: dict[str, Phase], seconds: float, rounds: int) -> dict:
    for phase in phases.values():  # warm-up: first connections, first model calls
        await phase.burst(0.3)
        phase.lat, phase.errors, phase.seconds = [], 0, 0.0
    for _ in range(rounds):
        for phase in phases.values():
            await phase.burst(seconds / rounds)
    return {name: p.figures() for name, p in phases.items()}


def profile(server, phase: Phase, seconds: float, out: Path) -> str:
    """A py-spy flame graph of the server's worker while ``phase`` loads it (py-spy from the venv or PATH)."""
    from clients.local_server import descendants

    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    workers = descendants(server.proc.pid)
    if spy is None or not workers:
        return "skipped: py-spy not installed" if spy is None else "skipped: no worker process"
    proc = subprocess.Popen([spy, "record", "-p", str(max(workers)), "-o", str(out), "-d", str(int(seconds)),
                             "-r", "250", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    asyncio.run(run_phases({"p": phase}, seconds, 1))
    _, err = proc.communicate(timeout=120)
    return str(out) if proc.returncode == 0 else f"py-spy failed: {err.decode(errors='replace')[-300:]}"


def upload_for(size: int) -> tuple[bytes, np.ndarray]:
    """A real Fashion-MNIST image (scaled to ``size``), PNG-encoded as a client would send it."""
    from PIL import Image

    from serving.contract.image import encode_png
    from serving.contract.sources import load_fashion_mnist

    try:
        first = load_fashion_mnist(Path("/usr/share/datasets/fashion-mnist"), "test").images[0]
    except Exception:  # no dataset: a deterministic texture of the same size
        first = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    img = Image.fromarray(first).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img.convert("RGB"))
    return encode_png(arr), arr


def images_for(size: int, n: int) -> np.ndarray:
    """``n`` different Fashion-MNIST test images at ``size`` through the image contract (random ones without the
    data set): the model phases' batch, and the parity / int8 calibration images of the exported bundle."""
    from serving.contract.image import encode_png, load_batch
    from serving.contract.sources import load_fashion_mnist

    try:
        images = load_fashion_mnist(Path("/usr/share/datasets/fashion-mnist"), "test").images[:n]
    except Exception:
        images = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
    return load_batch([encode_png(im) for im in images], size)


def add_dynamic_int8(bundle: Path) -> None:
    """ONNX Runtime's dynamic int8 of the fp32 graph, measured only (ConvInteger: slower than fp32 on CPU)."""
    import onnxruntime.quantization as q

    q.quantize_dynamic(str(bundle / "encoder.onnx"), str(bundle / VARIANTS["int8-dynamic"]),
                       weight_type=q.QuantType.QInt8)


def model_phases(enc, bundle: Path, batch: np.ndarray, args) -> dict:
    """(a), (b) and (b1), interleaved; with ``--variants`` the bundle's other graphs beside (b), each with its
    max |ONNX - PyTorch| on the batch."""
    import torch

    from serving.contract.encoder import OnnxEncoder

    ort = OnnxEncoder(bundle)
    tb = torch.from_numpy(batch)

    def torch_fn(_):
        with torch.inference_mode():
            x = tb.permute(0, 3, 1, 2).float().div(255.0)
            return torch.nn.functional.normalize(enc(x), dim=1)

    graphs = {"b_onnxruntime": ort, **{f"b_{v}": OnnxEncoder(bundle, onnx_file=VARIANTS[v]) for v in args.variants}}
    fns = {"a_torch_eager": torch_fn, **{name: g.embed for name, g in graphs.items()}}
    out = time_interleaved(fns, dict.fromkeys(fns, batch), args.seconds, args.rounds)
    out |= time_interleaved({"b1_onnxruntime_batch1": ort.embed}, {"b1_onnxruntime_batch1": batch[:1]},
                            args.seconds / 2, 1)
    reference = torch_fn(batch).numpy()
    for name, g in graphs.items():
        out[name] |= {"providers": g.providers, "graph": g.onnx_file,
                      "max_abs_diff_vs_torch": float(np.abs(g.embed(batch) - reference).max())}
    out["torch_threads"] = torch.get_num_threads()
    return out


def http_phases(tag: str, data: bytes, size: int, args) -> dict:
    from clients import local_server as srv

    one, many = multipart_body("image", data, 1), multipart_body("images", data, args.batch)
    servers = {}
    try:
        servers["real"] = srv.start({"BYOL_MODEL_TAG": tag}, timeout=120)
        servers["noop"] = srv.start({EDGE_ENV: "0"}, timeout=120, service="bench.serve_throughput:NoopFloor")
        servers["edge"] = srv.start({EDGE_ENV: "1"}, timeout=120, service="bench.serve_throughput:NoopFloor")
        url = {k: s.url for k, s in servers.items()}
        c = args.concurrency
        phases = {
            "c_http_embed": Phase(url["real"], "/embed", one, 1, c),
            "e_http_noop_floor": Phase(url["noop"], "/embed", one, 1, c),
            "f_http_noop_behind_edge": Phase(url["edge"], "/embed", one, 1, c),
            "d_http_embed_batch": Phase(url["real"], "/embed_batch", many, args.batch, 2, accept=NPY),
            "d_json_http_embed_batch": Phase(url["real"], "/embed_batch", many, args.batch, 2),
            "e_batch_http_noop_floor": Phase(url["noop"], "/embed_batch", many, args.batch, 2),
        }
        out = asyncio.run(run_phases(phases, args.seconds, args.rounds))
        import httpx

        out["server_batching"] = httpx.get(url["real"] + "/info", timeout=30).json().get("batching")
        if args.profile:
            out["flame_graphs"] = {
                route: profile(servers["real"], phases[key], args.seconds,
                               RESULTS.parent / f"serve_flame_{size}_{route.strip('/')}.svg")
                for route, key in (("/embed", "c_http_embed"), ("/embed_batch", "d_http_embed_batch"))}
        return out
    finally:
        for s in servers.values():
            s.stop()


def run_size(size: int, args, home: Path) -> dict:
    import torch

    from serving.store import register_bundle
    from training.export import export_bundle
    from training.networks import build_encoder

    torch.manual_seed(0)
    cfg = size_config(size)
    enc = build_encoder(cfg).eval()
    bundle = home / f"bundle-{size}"
    log.info("%d px: exporting %s", size, cfg)
    batch = images_for(size, args.batch)
    manifest = export_bundle(enc, bundle, meta={"note": "benchmark, random init"}, parity_images=batch[:16],
                             fp16="fp16" in args.variants, int8="int8" in args.variants)
    if "int8-dynamic" in args.variants:
        add_dynamic_int8(bundle)
    tag = register_bundle(bundle)
    data, _ = upload_for(size)
    out: dict = {"size": size, "encoder": cfg.to_dict(), "upload_bytes": len(data), "parity": manifest.parity}
    out |= model_phases(enc, bundle, batch, args)
    out |= http_phases(tag, data, size, args)
    ips = {k: v["images_per_s"] for k, v in out.items() if isinstance(v, dict) and "images_per_s" in v}
    out["ratios"] = {"c_over_e": ips["c_http_embed"] / ips["e_http_noop_floor"],
                     "c_over_f": ips["c_http_embed"] / ips["f_http_noop_behind_edge"],
                     "d_over_b": ips["d_http_embed_batch"] / ips["b_onnxruntime"],
                     "d_json_over_b": ips["d_json_http_embed_batch"] / ips["b_onnxruntime"],
                     "b_over_a": ips["b_onnxruntime"] / ips["a_torch_eager"],
                     "c_over_b": ips["c_http_embed"] / ips["b_onnxruntime"]}
    return out


def knn_variants(encoder_pt: Path, variants: list[str], home: Path) -> dict:
    """A trained encoder's fp32 graph and each variant on the standard kNN evaluation (``index.metrics.score``:
    the full Fashion-MNIST train split as the bank, the test split as queries, weighted kNN at k = 20 and 200); the
    int8 graph is calibrated on 64 *train* images (none of the queries)."""
    from index.metrics import score
    from serving.contract.encoder import OnnxEncoder
    from serving.contract.sources import load_source
    from training.artifact import load_encoder
    from training.export import export_bundle

    enc, _ = load_encoder(encoder_pt)
    size = int(enc.cfg.input_size)
    train, test = load_source("fashion-mnist", "train", size=size), load_source("fashion-mnist", "test", size=size)
    bundle = home / "bundle-knn"
    manifest = export_bundle(enc, bundle, parity_images=train.images[:64], fp16="fp16" in variants,
                             int8="int8" in variants)
    if "int8-dynamic" in variants:
        add_dynamic_int8(bundle)
    out: dict = {"encoder": str(encoder_pt), "input_size": size, "parity": manifest.parity, "graphs": {}}
    for name, file in [("fp32", None), *[(v, VARIANTS[v]) for v in variants]]:
        graph = OnnxEncoder(bundle, onnx_file=file)
        t0 = time.perf_counter()
        bank, queries = graph.embed_many(train.images), graph.embed_many(test.images)
        seconds = time.perf_counter() - t0
        got = score(bank, train.labels, queries, test.labels, probe=False).as_dict()
        out["graphs"][name] = {"knn_20": got["knn"], "knn_200": got["knn_200"], "se_20": got["se"]["knn"],
                               "embed_70k_s": round(seconds, 1)}
        out["graphs"][name]["knn_20_change"] = got["knn"] - out["graphs"]["fp32"]["knn_20"]
    return out


ROWS = ("a_torch_eager", "b_onnxruntime", *[f"b_{v}" for v in VARIANTS], "b1_onnxruntime_batch1", "c_http_embed",
        "d_http_embed_batch", "d_json_http_embed_batch", "e_http_noop_floor", "e_batch_http_noop_floor",
        "f_http_noop_behind_edge")
TARGETS = {"c_over_e": {28: 0.90}, "d_over_b": {28: 0.50, 224: 0.80}, "b_over_a": {224: 1.5}}


def table(results: list[dict], load: dict, knn: dict | None = None) -> str:
    from bench.machine import load_line

    rows = ["size  path                           img/s     req/s    p50 ms    p99 ms  max|ONNX-torch|"]
    for r in results:
        for key in (k for k in ROWS if k in r):
            v = r[key]
            diff = f"{v['max_abs_diff_vs_torch']:.1e}" if "max_abs_diff_vs_torch" in v else ""
            rows.append(f"{r['size']:>4}  {key:<28}{v['images_per_s']:>8.0f}  {v['requests_per_s']:>8.1f}  "
                        f"{v['p50_ms']:>8.1f}  {v['p99_ms']:>8.1f}  {diff:>15}")
    rows.append("")
    rows.append("ratio          " + "".join(f"{r['size']:>4} px " for r in results) + "  target")
    for name in ("c_over_e", "c_over_f", "d_over_b", "d_json_over_b", "b_over_a", "c_over_b"):
        wanted = TARGETS.get(name, {})
        goal = ", ".join(f"≥ {v:g} at {s} px" for s, v in wanted.items())
        rows.append(f"{name:<15}" + "".join(f"{r['ratios'][name]:>7.2f} " for r in results) + "  " + goal)
    if knn:
        rows.append(f"\nstandard kNN evaluation of {knn['encoder']} (60k bank, 10k queries):")
        for name, g in knn["graphs"].items():
            rows.append(f"  {name:<14} kNN@20 {g['knn_20'] * 100:6.2f} % (± {g['se_20'] * 100:.2f}, change "
                        f"{g['knn_20_change'] * 100:+.2f})  kNN@200 {g['knn_200'] * 100:6.2f} %  "
                        f"embedding 70k images {g['embed_70k_s']:.1f} s")
    rows.append(load_line(load))
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.machine import add_load_args

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="28,224")
    p.add_argument("--seconds", type=float, default=6.0, help="time of each phase, all rounds together")
    p.add_argument("--rounds", type=int, default=3, help="bursts each phase is cut into, taken in turn")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent single-image clients in (c), (e), (f)")
    p.add_argument("--batch", type=int, default=64, help="images per model call in (a)/(b) and per request in (d)")
    p.add_argument("--profile", action="store_true", help="py-spy flame graphs of the worker under (c) and (d)")
    p.add_argument("--variants", default="", help=f"other graphs timed beside (b): {', '.join(VARIANTS)} "
                   "(comma-separated; exported with the bundle, int8-dynamic made by ONNX Runtime)")
    p.add_argument("--knn-encoder", type=Path, default=None,
                   help="encoder.pt: also score fp32 and each variant on the standard kNN evaluation (full "
                        "Fashion-MNIST train split as bank, test split as queries)")
    p.add_argument("--out", default=str(RESULTS))
    add_load_args(p)
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def bench_logging() -> None:
    """Progress lines on stderr; the libraries' chatter (HTTP clients, the ONNX exporter) kept out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    from bench.machine import machine, recorded_load
    from serving.contract.atomic import atomic_write_json

    args = parse_args(argv)
    bench_logging()
    home = Path(os.environ["BYOL_HOME"])
    try:
        with recorded_load(strict=args.strict, limit=args.max_load) as load:
            info = machine(note="the load generator shares the cores with the servers")
            results = [run_size(int(s), args, home) for s in args.sizes.split(",") if s]
            knn = knn_variants(args.knn_encoder, args.variants, home) if args.knn_encoder else None
    finally:
        shutil.rmtree(home, ignore_errors=True)  # the run's private model store (bundles of up to ~45 MB)
    print(table(results, load, knn))
    doc = {"benchmark": "serve_throughput", "machine": info, "load": load, "knn": knn,
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
           "results": results,
           "method": "phases interleaved in --rounds bursts (HTTP: all servers up at once); load generator: "
                     "keep-alive HTTP/1.1 connections writing requests built once; (e) plain BentoML no-op, "
                     "(f) the same behind the service's edge",
           "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_json(args.out, doc)
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
