"""``byol embed-folder DIR --out OUT [--model TAG]``: a folder's vectors + metadata to files, no server needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients.workflows.embedding import DEFAULT_CHUNK, EmbedFolderConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol embed-folder", description="embed every image under DIR into "
                                "OUT/embeddings.npy + OUT/metadata.parquet + OUT/manifest.json (resumable); "
                                "'byol index build --from-embeddings OUT' then indexes it without re-embedding")
    p.add_argument("folder", type=Path, help="folder of images (nested folders are walked)")
    p.add_argument("--out", type=Path, required=True, help="output folder (new, or an interrupted run's)")
    p.add_argument("--model", default="latest", help="bundle tag: latest, a version, or byol-encoder:<version>")
    p.add_argument("--batch", type=int, default=256, help="images per ONNX Runtime call")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="images per resumable chunk")
    p.add_argument("--workers", type=int, default=4, help="decoding threads")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    from clients import tables
    from clients.workflows.embedding import embed_folder

    print(tables.embed_folder(embed_folder(EmbedFolderConfig(**vars(parser().parse_args(argv))))))
    return 0
