"""``byol index build|add|export``: embed a collection and (re)build its FAISS index, add files to it durably, or
write it out as ``embeddings.npy`` + ``metadata.parquet`` + ``manifest.json`` (the ``byol embed-folder`` layout)."""

from __future__ import annotations

import argparse

from clients import tables
from clients.workflows.indexing import DEFAULT_CHUNK, AddConfig, BuildConfig, ExportConfig


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol index", description="build, extend or export the FAISS index")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="embed a data set and (re)build the index of a model version")
    b.add_argument("--model", default="latest", help="bundle tag: latest, a version, or byol-encoder:<version>")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--data", default=None, help="fashion-mnist (default), cifar10 or a folder of images")
    src.add_argument("--collection", dest="from_collection", action="store_true",
                     help="re-index the stored collection (every item indexed or added so far) instead of --data")
    src.add_argument("--from-embeddings", default=None, metavar="OUT",
                     help="index a 'byol embed-folder' output as it is (no re-embedding; same encoder version)")
    b.add_argument("--root", default=None, metavar="DIR",
                   help="--from-embeddings: where the embedded folder lives here (default: the one OUT names)")
    b.add_argument("--data-root", default=None, help="where the data set lives (cifar10 needs it)")
    b.add_argument("--split", default="train", choices=["train", "test"])
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
    e = sub.add_parser("export", help="write an index's vectors + metadata as embeddings.npy + metadata.parquet")
    e.add_argument("--model", default="latest", help="bundle tag whose index to export")
    e.add_argument("--out", required=True, help="output folder (new)")
    r = sub.add_parser("repair", help="recover a damaged item store (an index's store.db, or the collection's): "
                       "every readable row kept (stop the server first)")
    w = r.add_mutually_exclusive_group(required=True)
    w.add_argument("--model", help="bundle version (or tag) whose index to repair")
    w.add_argument("--collection", action="store_true", help="repair the collection's database")
    return parser


def main(argv: list[str]) -> int:
    args = vars(parser().parse_args(argv))
    from clients.workflows import indexing

    action = args.pop("action")
    if action == "build":
        if args["root"] is not None and args["from_embeddings"] is None:
            raise ValueError("--root goes with --from-embeddings")
        if args["from_embeddings"] is not None and args["limit"] is not None:
            raise ValueError("--limit does not apply to --from-embeddings (it indexes the whole output)")
        print(tables.index_build(indexing.build(BuildConfig(**{k: v for k, v in args.items() if v is not None}))))
    elif action == "add":
        print(tables.index_add(indexing.add(AddConfig(**args))))
    elif action == "repair":
        print(tables.index_repair(indexing.repair(args["model"], collection=args["collection"])))
    else:
        print(tables.index_export(indexing.export(ExportConfig(**args))))
    return 0
