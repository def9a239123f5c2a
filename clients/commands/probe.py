"""``byol probe fit``: a linear probe + kNN classifier on frozen embeddings of a labelled set."""

from __future__ import annotations

import argparse

from clients import tables
from clients.workflows.evaluation import ProbeConfig


def add_subset_options(p: argparse.ArgumentParser) -> None:
    """The standard protocol uses every train and test image; these make a seeded subset (tests, quick looks)."""
    p.add_argument("--subset", type=int, default=None, metavar="N",
                   help="score on seeded subsets of N train and N test images instead of the full splits")
    p.add_argument("--max-train", type=int, default=None, help="seeded subset of N train images (the kNN bank)")
    p.add_argument("--max-test", type=int, default=None, help="seeded subset of N test images (the queries)")


def subset_caps(args: dict) -> dict:
    """``--subset N`` means ``--max-train N --max-test N`` unless those are given."""
    n = args.pop("subset")
    args["max_train"] = args["max_train"] or n
    args["max_test"] = args["max_test"] or n
    return args


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol probe", description="classifiers on frozen embeddings")
    sub = parser.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fit", help="fit a linear probe + kNN and report held-out accuracy")
    f.add_argument("--model", default="latest")
    f.add_argument("--data", default="fashion-mnist", help="fashion-mnist, cifar10 or a folder")
    f.add_argument("--data-root", default=None)
    f.add_argument("--labels", default=None, help="CSV of path,label rows (for a folder)")
    add_subset_options(f)
    f.add_argument("-k", "--k", type=int, default=20, help="neighbours for the kNN classifiers")
    f.add_argument("--batch", type=int, default=256)
    return parser


def main(argv: list[str]) -> int:
    args = subset_caps(vars(parser().parse_args(argv)))
    args.pop("action")
    from clients.workflows.evaluation import fit_probe

    print(tables.probe(fit_probe(ProbeConfig(**args))))
    return 0
