"""``byol train``: BYOL pretraining of an encoder (``training.train.train``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byol train", description="Pretrain an image encoder with BYOL.")
    p.add_argument("--preset", default="fmnist-demo", help="fmnist-demo | cifar10 | imagenet")
    p.add_argument("--out", required=True, help="run directory (checkpoint.pt, encoder.pt, tb/, summary.json)")
    p.add_argument("--data", default=None, help="fashion-mnist | cifar10 | DIR of images (overrides the preset)")
    p.add_argument("--data-root", default=None, help="where the dataset files live")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. optim.lr_base=0.3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue <out>/checkpoint.pt")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from training.config import apply_overrides, preset
    from training.train import train

    overrides = list(args.overrides)
    for key, value in (("data.source", args.data), ("data.data_root", args.data_root),
                       ("train.device", args.device)):
        if value:
            overrides.append(f"{key}={json.dumps(value)}")
    res = train(apply_overrides(preset(args.preset), overrides), Path(args.out), resume=args.resume)
    m = res.metrics
    knn = f", holdout kNN {m['holdout_knn']:.4f}" if "holdout_knn" in m else ""
    print(f"trained {res.steps} steps in {m['train_minutes']} min ({m['images_per_s']} img/s), "
          f"final loss {m['final_loss']:.4f}{knn}")
    print(f"encoder: {res.encoder_path}\ncheckpoint: {res.checkpoint_path}")
    return 0
