"""Decode cost of hostile images: small files that decode large, against a real server.

For each kind (TIFFs of modes F, I, I;16 and LAB, deflated; a progressive CMYK JPEG; a 16-bit grayscale PNG — all
within the pixel limits, a few hundred KB on the wire), ``POST /embed`` once, then 4 at once, and record:

* the peak RSS of the embedding worker(s) over their RSS just before (``VmHWM`` after writing ``5`` to
  ``/proc/<pid>/clear_refs``, so the kernel's own high-water mark: no sampling can miss a peak), MiB;
* the wall time of the one request, and of the 4 together; every answer's status (200, or 413/503 when the decode
  memory budget refused or timed out: never 500, never a dead worker — checked after each kind);
* the file size, and the decode cost the contract estimates for it (``serving.contract.image.decode_cost``, when the
  checkout has it).

The server runs with the checkout's defaults (``BYOL_DECODE_MEMORY_BYTES`` 1 GiB) unless ``--memory`` says otherwise.
Everything runs in a private ``BYOL_HOME`` (deleted at the end) with a random-init 28-px encoder (the model is not
what is measured). Results: a table on stdout and ``bench/results/decode_cost.json`` (one entry per ``--name``, so a
run of another checkout, e.g. the code before the budget, can sit beside it), with the CPU and the machine's load.

    .venv/bin/python bench/decode_cost.py [--side 6300] [--kinds tiff_F,tiff_I] [--memory BYTES] [--name after]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "decode_cost.json"
SERVICE_NAME = "byol_embed"

from clients.local_server import service_processes, status_kb  # noqa: E402


def _pattern(mode: str, w: int, h: int):
    """A striped image of ``mode`` (compresses to almost nothing, decodes to ``w x h`` of that mode)."""
    from PIL import Image

    x = (np.arange(w, dtype=np.float64) % 97) / 96
    if mode == "LAB":
        return Image.new("LAB", (w, h), (50, 10, 20))
    typed = {"F": (x * 3.5 - 1).astype(np.float32), "I": (x * 200_000 - 70_000).astype(np.int32),
             "I;16": (x * 65535).astype(np.uint16)}
    if mode in typed:
        return Image.fromarray(np.broadcast_to(typed[mode], (h, w)).copy())
    return Image.fromarray(np.broadcast_to((x * 255).astype(np.uint8)[None, :, None], (h, w, 3)).copy()).convert(mode)


def _save(img, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


HOSTILE = {
    "tiff_F": lambda s: _save(_pattern("F", s, s), "TIFF", compression="tiff_adobe_deflate"),
    "tiff_I": lambda s: _save(_pattern("I", s, s), "TIFF", compression="tiff_adobe_deflate"),
    "tiff_I16": lambda s: _save(_pattern("I;16", s, s), "TIFF", compression="tiff_adobe_deflate"),
    "tiff_LAB": lambda s: _save(_pattern("LAB", s, s), "TIFF", compression="tiff_adobe_deflate"),
    "jpeg_cmyk": lambda s: _save(_pattern("CMYK", s, s), "JPEG", progressive=True),
    "png_I16": lambda s: _save(_pattern("I;16", s, s), "PNG"),
}


def hostile(kind: str, side: int) -> bytes:
    """The ``kind`` image, ``side`` x ``side`` (see :data:`HOSTILE`)."""
    return HOSTILE[kind](side)


def estimated_cost(data: bytes, size: int = 28) -> int | None:
    """The contract's decode cost for ``data`` (None in a checkout without one)."""
    from serving.contract import image

    if not hasattr(image, "decode_cost"):
        return None
    img = image.open_image(data)
    try:
        return image.decode_cost(img, size)
    finally:
        img.close()


def embed_workers(server) -> list[int]:
    """The server's embedding worker processes (``--service-name byol_embed`` in their command line)."""
    return [pid for pid, name in service_processes(server).items() if name == SERVICE_NAME]


def reset_peaks(pids: list[int]) -> dict[int, int]:
    """Reset each process's RSS high-water mark (``clear_refs`` 5) → its RSS now, kB."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return {pid: status_kb(pid, "VmRSS") for pid in pids}


def peak_over_mb(before: dict[int, int]) -> float:
    """What the processes rose to since :func:`reset_peaks`: the sum over them of ``VmHWM`` − their RSS then, MiB."""
    return round(sum(status_kb(pid, "VmHWM") - rss for pid, rss in before.items()) / 1024, 1)


async def _fire(url: str, data: bytes, n: int, timeout: float) -> tuple[list[int], float]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        t0 = time.perf_counter()
        answers = await asyncio.gather(*(http.post("/embed", files={"image": ("x", data)}) for _ in range(n)))
        return [r.status_code for r in answers], round(time.perf_counter() - t0, 2)


def attack(server, data: bytes, n: int, timeout: float = 120) -> dict:
    """``n`` concurrent ``/embed`` of ``data`` → statuses, wall seconds, the worker(s)' peak RSS rise (MiB)."""
    pids = embed_workers(server)
    before = reset_peaks(pids)
    statuses, seconds = asyncio.run(_fire(server.url, data, n, timeout))
    alive = all(Path(f"/proc/{pid}").exists() for pid in pids) and embed_workers(server) == pids
    return {"n": n, "statuses": statuses, "seconds": seconds, "peak_rss_rise_mb": peak_over_mb(before),
            "rss_before_mb": round(sum(before.values()) / 1024, 1), "workers_alive": alive}


def make_bundle(home: Path) -> str:
    """A random-init 28-px encoder, exported and registered in the run's model store → its tag."""
    import torch

    from serving.store import register_bundle
    from training.export import export_bundle
    from training.networks import EncoderConfig, build_encoder

    torch.manual_seed(0)
    cfg = EncoderConfig(arch="resnet10", stem="small-s2", width=16, input_size=28, mean=(0.5,) * 3, std=(0.25,) * 3)
    rng = np.random.default_rng(0)
    export_bundle(build_encoder(cfg).eval(), home / "bundle", meta={"note": "decode_cost bench, random init"},
                  parity_images=rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8))
    return register_bundle(home / "bundle")


def measure(args, tag: str) -> list[dict]:
    from clients import local_server as srv
    from serving.contract.image import encode_png

    env = {"BYOL_MODEL_TAG": tag, **({"BYOL_DECODE_MEMORY_BYTES": str(args.memory)} if args.memory else {})}
    server = srv.start(env, timeout=180)
    rows = []
    try:
        good = encode_png(np.full((28, 28, 3), 90, np.uint8))
        attack(server, good, 1)  # warm: the first request's imports and allocations are not the decode's
        for kind in args.kinds.split(","):
            data = hostile(kind, args.side)
            row = {"kind": kind, "side": args.side, "file_kb": round(len(data) / 1024, 1),
                   "estimated_cost_mb": (lambda c: None if c is None else round(c / 2**20, 1))(estimated_cost(data)),
                   "one": attack(server, data, 1), "concurrent": attack(server, data, args.concurrency)}
            row["healthy_after"] = attack(server, good, 1)["statuses"] == [200]
            rows.append(row)
            print(_row_line(row), flush=True)
    finally:
        server.stop()
    return rows


def _row_line(row: dict) -> str:
    one, many = row["one"], row["concurrent"]
    codes = ",".join(str(c) for c in sorted(many["statuses"]))
    return (f"{row['kind']:10s} {row['side']:>5d} {row['file_kb']:>8.0f} {str(row['estimated_cost_mb']):>9s}"
            f" {one['peak_rss_rise_mb']:>9.0f} {one['seconds']:>6.2f}s {one['statuses'][0]:>4d}"
            f" {many['peak_rss_rise_mb']:>9.0f} {many['seconds']:>6.2f}s  {codes:16s}"
            f" {'ok' if row['healthy_after'] and many['workers_alive'] else 'DEAD/UNHEALTHY'}")


def main(argv: list[str] | None = None) -> int:
    from bench import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=6300, help="pixels a side (6300: 39.7 Mpx, under the 40 M limit)")
    parser.add_argument("--kinds", default=",".join(HOSTILE))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--memory", type=int, default=0, help="BYOL_DECODE_MEMORY_BYTES for the server (0: default)")
    parser.add_argument("--name", default="current", help="the entry of the JSON this run writes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    machine.add_load_args(parser)
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="byol-bench-decode-"))
    os.environ["BYOL_HOME"], os.environ["BENTOML_HOME"] = str(home), str(home / "bentoml")
    try:
        tag = make_bundle(home)
        print(f"{'kind':10s} {'side':>5s} {'file KB':>8s} {'est. MiB':>9s} {'1: +MiB':>9s} {'time':>7s} {'code':>4s}"
              f" {f'{args.concurrency}: +MiB':>9s} {'time':>7s}  statuses")
        with machine.recorded_load(args.strict, args.max_load) as load:
            rows = measure(args, tag)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(machine.load_line(load))
    print(machine.cpu_line())
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    results["runs"][args.name] = {"machine": machine.machine(), "load": load, "memory_env": args.memory or None,
                                  "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} ({args.name!r})")
    bad = [r["kind"] for r in rows if not r["healthy_after"] or any(
        c not in (200, 413, 503) for c in r["one"]["statuses"] + r["concurrent"]["statuses"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
