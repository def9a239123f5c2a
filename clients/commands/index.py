"""``byol index build|add``: embed a collection and (re)build its FAISS index, or add files to it durably."""

from __future__ import annotations

import argparse

from clients import tables
from clients.workflows.indexing import DEFAULT_CHUNK, AddConfig, BuildConfig


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol index", description="build or extend the FAISS index")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="embed a data set and (re)build the index of a model version")
    b.add_argument("--model", default="latest", help="bundle tag: latest, a version, or byol-encoder:<version>")
    b.add_argument("--data", default="fashion-mnist", help="fashion-mnist, cifar10 or a folder of images")
    b.add_argument("--data-root", default=None, help="where the data set lives (cifar10 needs it)")
    b.add_argument("--split", default="train", choices=["train", "test"])
    b.add_argument("--collection", dest="from_collection", action="store_true",
                   help="re-index the stored collection (every item indexed or added so far) instead of --data")
    b.add_argument("--limit", type=int, default=None, help="index only the first N items")
    b.add_argument("--factory", default="auto", help="'auto' (chosen from N, dim, memory) or a FAISS factory string")
    b.add_argument("--batch", type=int, default=256)
    b.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="items per resumable chunk")
    b.add_argument("--force", action="store_true", help="replace an existing index of this version")
    b.add_argument("--quiet", dest="progress", action="store_false", help="no progress bar")
    a = sub.add_parser("add", help="embed image files and add them to the index (durably)")
    a.add_argument("paths", nargs="+", help="image files or folders")
    a.add_argument("--model", default="latest")
    a.add_argument("--label", default=None, help="label to record with these images")
    a.add_argument("--batch", type=int, default=256)
    return parser


def main(argv: list[str]) -> int:
    args = vars(parser().parse_args(argv))
    from clients.workflows import indexing

    if args.pop("action") == "build":
        print(tables.index_build(indexing.build(BuildConfig(**args))))
    else:
        print(tables.index_add(indexing.add(AddConfig(**args))))
    return 0
