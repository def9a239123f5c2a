"""Serving throughput, side by side in one run: where does an image's time go between the model and HTTP?

(a) PyTorch eager f_θ, batched            — the training-side baseline (this script may import torch)
(b) ONNX Runtime batched (OnnxEncoder)     — what the service runs
(c) HTTP /embed, N concurrent clients, one image per request (micro-batched server side)
(d) HTTP /embed_batch, 64 images a request
(e) HTTP no-op endpoint taking the same upload — the framework's per-request floor (shared/ENVIRONMENT.md)
at the demo size (28 px, the fmnist-demo encoder) and a compute-bound size (224 px, ImageNet-stem ResNet-18).
Images/s and p50/p99 latency; ratios (c)/(b), (b)/(a), (c)/(e). Loopback only; bounded time per phase.

    .venv/bin/python bench/serve_throughput.py [--sizes 28,224] [--seconds 6] [--concurrency 32]

The load generator runs on the same cores as the server: on a small box it takes a share of the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if __name__ == "__main__":  # a private model store for the run, before bentoml is imported
    _HOME = Path(tempfile.mkdtemp(prefix="byol-bench-serve-"))
    os.environ["BYOL_HOME"], os.environ["BENTOML_HOME"] = str(_HOME), str(_HOME / "bentoml")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import bentoml  # noqa: E402

RESULTS = REPO / "bench" / "results" / "serve_throughput.json"
log = logging.getLogger("bench.serve")


@bentoml.service(name="noop_floor", workers=1)
class NoopFloor:
    """(e): same multipart upload, same Path typing, reads the bytes and answers; no decode, no model."""

    @bentoml.api(route="/embed")
    async def embed(self, image: Path) -> dict:
        return {"bytes": len(image.read_bytes())}


CONFIGS = {
    28: {"arch": "resnet10", "stem": "small-s2", "width": 32, "input_size": 28,
         "mean": (0.286, 0.286, 0.286), "std": (0.353, 0.353, 0.353)},  # the fmnist-demo encoder's shape
    224: {"arch": "resnet18", "stem": "imagenet", "width": 64, "input_size": 224},
}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def time_batches(fn, batch: np.ndarray, seconds: float, min_calls: int = 3) -> dict:
    fn(batch)  # warm-up
    lat, t0 = [], time.perf_counter()
    while len(lat) < min_calls or time.perf_counter() - t0 < seconds:
        s = time.perf_counter()
        fn(batch)
        lat.append(time.perf_counter() - s)
    total = time.perf_counter() - t0
    return {"images_per_s": len(lat) * len(batch) / total, "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "calls": len(lat), "batch": len(batch)}


async def http_load(url: str, route: str, field: str, payload: bytes, per_request: int, concurrency: int,
                    seconds: float) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    files = [(field, (f"{i}.png", payload, "image/png")) for i in range(per_request)]
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:
        await c.post(route, files=files)  # warm-up

        async def worker():
            nonlocal errors
            while time.perf_counter() < deadline:
                s = time.perf_counter()
                r = await c.post(route, files=files)
                if r.status_code != 200:
                    errors += 1
                lat.append(time.perf_counter() - s)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        total = time.perf_counter() - t0
    return {"images_per_s": len(lat) * per_request / total, "requests_per_s": len(lat) / total,
            "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "requests": len(lat), "errors": errors,
            "concurrency": concurrency, "images_per_request": per_request}


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


def run_size(size: int, args, home: Path) -> dict:
    import torch

    from clients import local_server as srv
    from serving.contract.encoder import OnnxEncoder
    from serving.store import register_bundle
    from training.export import export_bundle
    from training.networks import EncoderConfig, build_encoder

    torch.manual_seed(0)
    cfg = EncoderConfig(**CONFIGS[size])
    enc = build_encoder(cfg).eval()
    bundle = home / f"bundle-{size}"
    log.info("%d px: exporting %s", size, cfg)
    export_bundle(enc, bundle, meta={"note": "benchmark, random init"},
                  parity_images=np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8))
    tag = register_bundle(bundle)
    data, arr = upload_for(size)
    batch = np.repeat(arr[None], args.batch, axis=0)
    out: dict = {"size": size, "encoder": CONFIGS[size], "upload_bytes": len(data)}

    with torch.inference_mode():
        tb = torch.from_numpy(batch)

        def torch_fn(_):
            x = tb.permute(0, 3, 1, 2).float().div(255.0)
            return torch.nn.functional.normalize(enc(x), dim=1)

        out["a_torch_eager"] = time_batches(torch_fn, batch, args.seconds)
    ort = OnnxEncoder(bundle)
    out["b_onnxruntime"] = time_batches(ort.embed, batch, args.seconds)
    out["b1_onnxruntime_batch1"] = time_batches(ort.embed, batch[:1], args.seconds / 2)
    del ort
    env = {"BYOL_MODEL_TAG": tag}
    server = srv.start(env, timeout=120)
    try:
        out["c_http_embed"] = asyncio.run(http_load(server.url, "/embed", "image", data, 1, args.concurrency,
                                                    args.seconds))
        out["d_http_embed_batch"] = asyncio.run(http_load(server.url, "/embed_batch", "images", data, args.batch,
                                                          2, args.seconds))
        import httpx

        out["server_batch_sizes"] = httpx.get(server.url + "/info").json().get("batching")
    finally:
        server.stop()
    floor = srv.start({}, timeout=120, service="bench.serve_throughput:NoopFloor")
    try:
        out["e_http_noop_floor"] = asyncio.run(http_load(floor.url, "/embed", "image", data, 1, args.concurrency,
                                                         args.seconds))
    finally:
        floor.stop()
    ips = {k: v["images_per_s"] for k, v in out.items() if isinstance(v, dict) and "images_per_s" in v}
    out["ratios"] = {"c_over_b": ips["c_http_embed"] / ips["b_onnxruntime"],
                     "b_over_a": ips["b_onnxruntime"] / ips["a_torch_eager"],
                     "c_over_e": ips["c_http_embed"] / ips["e_http_noop_floor"],
                     "d_over_b": ips["d_http_embed_batch"] / ips["b_onnxruntime"]}
    return out


def table(results: list[dict]) -> str:
    rows = ["size  path                          img/s     p50 ms    p99 ms"]
    for r in results:
        for key in ("a_torch_eager", "b_onnxruntime", "b1_onnxruntime_batch1", "c_http_embed",
                    "d_http_embed_batch", "e_http_noop_floor"):
            v = r[key]
            rows.append(f"{r['size']:>4}  {key:<28}{v['images_per_s']:>8.0f}  {v['p50_ms']:>8.1f}  {v['p99_ms']:>8.1f}")
        rows.append("      ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="28,224")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each timed phase")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent single-image clients in (c) and (e)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    home = Path(os.environ["BYOL_HOME"])
    try:
        results = [run_size(int(s), args, home) for s in args.sizes.split(",")]
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)  # the run's private model store (bundles of up to ~45 MB)
    print(table(results))
    doc = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "note": "load generator shares the CPU with the server; other jobs may share it too"},
           "args": vars(args), "results": results, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from serving.contract.atomic import atomic_write_json

    atomic_write_json(args.out, doc)
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
