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
    p.add_argument("--eval-data", default="fashion-mnist", help="labelled set for the gate (train/test splits)")
    p.add_argument("--eval-labels", default=None, help="CSV of path,label rows when --eval-data is a folder")
    p.add_argument("--data-root", default=None, help="root of the old / evaluation dataset files")
    p.add_argument("--eval-max-train", type=int, default=None,
                   help="gate: seeded subset of labelled reference images (default: the whole train split)")
    p.add_argument("--eval-max-test", type=int, default=None,
                   help="gate: seeded subset of held-out images (default: the whole test split)")
    p.add_argument("--tolerance", type=float, default=0.01, help="accepted drop in kNN and probe accuracy")
    p.add_argument("--no-promote", dest="promote", action="store_false", help="gate and register, but do not promote")
    p.add_argument("--url", default=None, help="running server to reload after promotion")
    p.add_argument("--token", default=None, help="admin token for --url (default: $BYOL_ADMIN_TOKEN)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from clients.workflows.evaluation import GateConfig
    from clients.workflows.retrain import RetrainConfig, retrain

    gate = GateConfig(data=args.eval_data, data_root=args.data_root, labels=args.eval_labels,
                      max_train=args.eval_max_train, max_test=args.eval_max_test, tolerance=args.tolerance)
    cfg = RetrainConfig(new_data=args.new_data, parent=args.parent, replay=args.replay, steps=args.steps,
                        minutes=args.minutes, overrides=args.overrides, gate=gate, promote=args.promote,
                        url=args.url, token=args.token)
    print(tables.retrain(retrain(cfg)))
    return 0
