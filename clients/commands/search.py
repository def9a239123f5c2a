"""``byol search``: nearest neighbours of an image in a version's index (+ a PNG grid)."""

from __future__ import annotations

import argparse

from clients import tables
from clients.workflows.indexing import SearchConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol search", description="nearest neighbours of an image")
    p.add_argument("image", help="query image file")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--model", default="latest")
    p.add_argument("--grid", default=None, help="write a PNG: the query and its neighbours")
    return p


def main(argv: list[str]) -> int:
    from clients.workflows.indexing import search

    print(tables.search(search(SearchConfig(**vars(parser().parse_args(argv))))))
    return 0
