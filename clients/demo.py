"""``byol demo``: the main job on the embedded default (Fashion-MNIST), end to end, ending with a live server.

train → eval (vs raw pixels and random init) → export (ONNX + parity) → index the collection → fit the probe →
promote → serve. Each step is the same subcommand a user would run; the demo only strings them together.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path


def _step(title: str, argv: list[str]) -> None:
    from clients.cli import main as byol

    print(f"\n==> {title}: byol {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    code = byol(argv)
    if code != 0:
        raise RuntimeError(f"step '{title}' failed (exit {code}); rerun it alone to see why")
    print(f"    ({title}: {time.monotonic() - t0:.0f} s)", flush=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byol demo", description=__doc__)
    p.add_argument("--out", default="runs/fmnist-demo", help="training run directory")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--retrain", action="store_true", help="train again even if the run already has an encoder")
    p.add_argument("--no-serve", action="store_true", help="stop after promoting (no server)")
    args = p.parse_args(argv)

    data = ["--data", "fashion-mnist"] + (["--data-root", args.data_root] if args.data_root else [])
    out = Path(args.out)
    encoder = out / "encoder.pt"
    if args.retrain or not encoder.is_file():
        _step("train", ["train", "--preset", "fmnist-demo", "--out", str(out), *data])
    else:
        print(f"==> train: {encoder} exists (use --retrain to train again)")
    _step("eval", ["eval", "--encoder", str(encoder), *data, "--json", str(out / "eval.json")])
    _step("export", ["export", "--encoder", str(encoder), "--parity-data", "fashion-mnist",
                     *(["--data-root", args.data_root] if args.data_root else [])])
    from serving.contract.bundle import read_bundle
    from serving.store import bundle_path  # after export: the newest bundle is ours

    _, manifest = read_bundle(bundle_path("latest"))
    tag = manifest.version
    _step("index", ["index", "build", "--model", tag, *data, "--split", "train"])
    _step("probe", ["probe", "fit", "--model", tag, *data, "--max-train", "10000"])
    _step("promote", ["promote", tag])
    if args.no_serve:
        return 0
    token = os.environ.get("BYOL_ADMIN_TOKEN") or secrets.token_urlsafe(16)
    os.environ["BYOL_ADMIN_TOKEN"] = token
    url = f"http://{args.host}:{args.port}"
    print(
        f"\n==> serving bundle {tag} at {url}  (admin token for /index/add, /index/remove, /admin/reload: {token})\n"
        f"    curl -s -F image=@some.png {url}/embed\n"
        f"    curl -s -F image=@some.png -F k=5 {url}/search\n"
        f"    python -c \"from clients.client import EmbeddingClient as C; "
        f"print(C('{url}').search('some.png', k=5))\"\n",
        flush=True,
    )
    from clients.cli import main as byol

    return byol(["serve", "--model", tag, "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
