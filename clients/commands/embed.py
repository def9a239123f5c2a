"""``byol embed IMG... [--url U] [--format json|npy] [--out FILE] [--batch N]``: embeddings from a running server."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

import numpy as np


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol embed", description="embed image files through a running byol server")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--url", default=os.environ.get("BYOL_URL", "http://127.0.0.1:3000"))
    p.add_argument("--format", choices=["json", "npy"], default="json")
    p.add_argument("--out", help="output file (required for npy; json goes to stdout without it)")
    p.add_argument("--batch", type=int, default=64, help="images per request (server limit: 256)")
    p.add_argument("--timeout", type=float, default=60.0)
    return p


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.format == "npy" and not args.out:
        p.error("--format npy needs --out FILE")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    from clients.client import EmbeddingClient
    from serving.contract.atomic import atomic_write_bytes

    chunks = []
    with EmbeddingClient(args.url, timeout=args.timeout) as client:
        for start in range(0, len(args.images), args.batch):
            chunks.append(client.embed_batch(args.images[start:start + args.batch]))
        version = client.version
    vectors = np.concatenate(chunks)
    if args.format == "npy":
        buf = io.BytesIO()
        np.save(buf, vectors)
        data = buf.getvalue()
    else:
        doc = {"version": version, "dim": int(vectors.shape[1]),
               "items": [{"file": f, "embedding": v.tolist()} for f, v in zip(args.images, vectors, strict=True)]}
        data = (json.dumps(doc) + "\n").encode()
    if args.out:
        atomic_write_bytes(args.out, data)
        print(f"{len(vectors)} embeddings ({vectors.shape[1]}-d, version {version}) → {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(data.decode())
    return 0
