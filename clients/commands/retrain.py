"""``byol retrain``: continue BYOL on new unlabeled images, gate, re-index, promote (cron-safe)."""

from __future__ import annotations

import argparse

from clients import tables


def parser() -> argparse.ArgumentParser:
    from clients.workflows import retrain

    p = argparse.ArgumentParser(prog="byol retrain", description=retrain.__doc__)
    p.add_argument("--from", dest="parent", default=None,
                   help="bundle version to continue from (default: the served one, see release.json)")
    p.add_argument("--new-data", nargs="+", required=True, help="folder(s) of newly arrived unlabeled images")
    p.add_argument("--replay", type=float, default=1.0,
                   help="old images replayed per new image (default 1.0: a 50/50 mix; 0 = new images only)")
    p.add_argument("--steps", type=int, default=300, help="BYOL steps for this retrain (schedules restart)")
    p.add_argument("--minutes", type=float, default=None, help="time budget for the training stage")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override (as in byol train)")
    g = p.add_argument_group("gate", "Without --eval-data the label-free gate runs on a fixed seeded sample of "
                             "your own images (the new ones + those the served encoder was trained on). With it, the "
                             "labelled gate compares kNN and linear-probe accuracy. Fashion-MNIST only when named.")
    g.add_argument("--eval-data", default=None, metavar="DATA",
                   help="labelled gate on DIR (one sub-folder per class), FILE.csv (path,label rows), or a data set "
                        "(fashion-mnist, cifar10)")
    g.add_argument("--eval-labels", default=None, metavar="FILE.csv",
                   help="labelled gate on a CSV of path,label rows (the same as --eval-data FILE.csv)")
    g.add_argument("--eval-max-train", type=int, default=None,
                   help="labelled gate: seeded subset of reference images (default: the whole train split)")
    g.add_argument("--eval-max-test", type=int, default=None,
                   help="labelled gate: seeded subset of held-out images (default: the whole test split)")
    g.add_argument("--tolerance", type=float, default=None,
                   help="labelled gate: accepted drop in kNN and probe accuracy (default 0.01)")
    g.add_argument("--gate-sample", type=int, default=None,
                   help="label-free gate: images in its probe sample (default 1000)")
    p.add_argument("--data-root", default=None, help="root of the old / evaluation data set files")
    p.add_argument("--no-promote", dest="promote", action="store_false", help="gate and register, but do not promote")
    p.add_argument("--url", default=None, help="running server to reload after promotion")
    p.add_argument("--token", default=None, help="admin token for --url (default: $BYOL_ADMIN_TOKEN)")
    return p


def gate_configs(args: argparse.Namespace):
    """``(labelled GateConfig or None, LabelFreeGateConfig)`` from the gate options; mixing the two is an error."""
    from pathlib import Path

    from clients.workflows.evaluation import GateConfig, LabelFreeGateConfig

    labels = args.eval_labels
    if args.eval_data and Path(args.eval_data).suffix.lower() == ".csv":
        if labels:
            raise ValueError("give the labels CSV once: --eval-data FILE.csv or --eval-labels FILE.csv")
        labels = args.eval_data
    labelled = bool(args.eval_data or labels)
    label_free = LabelFreeGateConfig()
    if args.gate_sample is not None:
        if labelled:
            raise ValueError("--gate-sample is for the label-free gate; with --eval-data the labelled gate runs")
        if args.gate_sample < LabelFreeGateConfig.MIN_IMAGES:
            raise ValueError(f"--gate-sample must be at least {LabelFreeGateConfig.MIN_IMAGES}, got {args.gate_sample}")
        label_free.sample = args.gate_sample
    given = [name for name, v in (("--tolerance", args.tolerance), ("--eval-max-train", args.eval_max_train),
                                  ("--eval-max-test", args.eval_max_test)) if v is not None]
    if not labelled:
        if given:
            raise ValueError(f"{', '.join(given)} apply to the labelled gate: add --eval-data (without it the "
                             "label-free gate runs on your own images)")
        return None, label_free
    gate = GateConfig(data=args.eval_data or labels, data_root=args.data_root, labels=labels,
                      max_train=args.eval_max_train, max_test=args.eval_max_test,
                      tolerance=0.01 if args.tolerance is None else args.tolerance)
    return gate, label_free


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from clients.workflows.retrain import RetrainConfig, retrain

    gate, label_free = gate_configs(args)
    cfg = RetrainConfig(new_data=args.new_data, parent=args.parent, replay=args.replay, steps=args.steps,
                        minutes=args.minutes, overrides=args.overrides, gate=gate, label_free=label_free,
                        data_root=args.data_root, promote=args.promote, url=args.url, token=args.token)
    result = retrain(cfg)
    print(tables.retrain(result))
    return 1 if result.get("gate", {}).get("gate") == "training" else 0  # the candidate's training failed
