"""``byol eval``: kNN + linear probe of an encoder beside raw pixels and a random-init twin."""

from __future__ import annotations

import argparse

from clients import tables
from clients.commands.probe import add_subset_options, subset_caps
from clients.workflows.evaluation import EvalConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol eval", description="kNN and linear-probe accuracy of a BYOL encoder.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--encoder", help="encoder.pt written by 'byol train' (PyTorch; adds a random-init baseline)")
    src.add_argument("--model", help="a registered bundle (tag or version), evaluated through ONNX Runtime")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist | cifar10 | DIR with class sub-folders")
    p.add_argument("--data-root", default=None)
    p.add_argument("--labels", default=None, help="CSV of path,label rows (for a folder)")
    p.add_argument("--k", type=int, default=20)
    add_subset_options(p)
    p.add_argument("--no-probe", dest="probe", action="store_false", help="kNN only (the probe is the slow part)")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="score the baselines again instead of reusing $BYOL_HOME/cache/baselines")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the results here")
    return p


def main(argv: list[str]) -> int:
    args = subset_caps(vars(parser().parse_args(argv)))
    out = args.pop("json")
    from clients.workflows.evaluation import evaluate
    from serving.contract.atomic import atomic_write_json

    report = evaluate(EvalConfig(**args))
    print(tables.evaluation(report))
    if out:
        atomic_write_json(out, report)
    return 0
