"""``byol probe fit``: a linear probe + kNN classifier on frozen embeddings of a labelled set."""

from __future__ import annotations

import argparse

from clients import tables
from clients.workflows.evaluation import ProbeConfig


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol probe", description="classifiers on frozen embeddings")
    sub = parser.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fit", help="fit a linear probe + kNN and report held-out accuracy")
    f.add_argument("--model", default="latest")
    f.add_argument("--data", default="fashion-mnist", help="fashion-mnist, cifar10 or a folder")
    f.add_argument("--data-root", default=None)
    f.add_argument("--labels", default=None, help="CSV of path,label rows (for a folder)")
    f.add_argument("--max-train", type=int, default=None, help="fit on a random subset of N training images")
    f.add_argument("--max-test", type=int, default=None, help="evaluate on a random subset of N held-out images")
    f.add_argument("-k", "--k", type=int, default=20, help="neighbours for the kNN classifiers")
    f.add_argument("--batch", type=int, default=256)
    return parser


def main(argv: list[str]) -> int:
    args = vars(parser().parse_args(argv))
    args.pop("action")
    from clients.workflows.evaluation import fit_probe

    print(tables.probe(fit_probe(ProbeConfig(**args))))
    return 0
