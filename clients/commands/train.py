"""``byol train``: BYOL pretraining of an encoder (``training.train.train``).

Which preset: ``--preset`` when given; else ``fmnist-demo`` for Fashion-MNIST, ``cifar10`` for CIFAR-10, and for a
folder of images a folder preset chosen from the images (``training.folder``: 64, 128 or 224 px; it prints why).

Resolution order (later wins): the preset, then --config FILE, then --data/--data-root/--device/--minutes, then
--set. A config file is YAML with any subset of the keys 'byol config show' prints; unknown keys are errors. The
resolved config is saved in the run directory as config.yaml (pass it to --config to run the same again).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    from training.config import PRESETS

    p = argparse.ArgumentParser(prog="byol train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help=f"{' | '.join(PRESETS)} (default: from --data)")
    p.add_argument("--out", required=True, help="run directory (checkpoint.pt, encoder.pt, tb/, summary.json)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML config applied over the preset, under --set (see 'byol config show')")
    p.add_argument("--data", default=None, help="fashion-mnist | cifar10 | DIR of images (default: fashion-mnist)")
    p.add_argument("--data-root", default=None, help="where the dataset files live")
    p.add_argument("--size", type=int, default=None, help="input size in px for a folder (default: from the images)")
    p.add_argument("--minutes", type=float, default=None, help="time budget: the schedules fit this many minutes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied last, e.g. optim.lr_base=0.3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue <out>/checkpoint.pt")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    return p


def choose_config(args: argparse.Namespace):
    """``(config, why)``: the named preset, the data set's, or a folder preset; then ``--config``; then the command's
    overrides (``--set`` last)."""
    from serving.contract.sources import dataset_name
    from training.config import apply_overrides, preset
    from training.config_file import load_config
    from training.folder import explain, folder_preset

    survey = None
    if args.size is not None and (args.preset or args.data is None or dataset_name(args.data)):
        raise ValueError("--size applies to a folder of images without --preset")
    if args.preset:
        cfg = preset(args.preset)
    elif args.data and not dataset_name(args.data):
        cfg, survey = folder_preset(args.data, args.size, gpu=False if args.device == "cpu" else None)
    else:
        cfg = preset("cifar10" if args.data and dataset_name(args.data) == "cifar10" else "fmnist-demo")
    if args.config:
        cfg = load_config(args.config, base=cfg)
    overrides = []
    if args.minutes is not None:
        if args.minutes <= 0:
            raise ValueError(f"--minutes must be positive, got {args.minutes}")
        overrides.append(f"train.max_minutes={args.minutes}")
    data = args.data
    if data and not dataset_name(data):  # a folder: absolute, so a retrain from cron (another cwd) finds it
        data = str(Path(data).expanduser().resolve())
    for key, value in (("data.source", data), ("data.data_root", args.data_root), ("train.device", args.device)):
        if value:
            overrides.append(f"{key}={json.dumps(value)}")
    cfg = apply_overrides(cfg, overrides + list(args.overrides))
    return cfg, None if survey is None else explain(cfg, survey)  # what will run, after every override


def main(argv: list[str]) -> int:
    import time

    started = time.time()  # the user's clock: --minutes counts the folder's survey and the set-up too
    args = parser().parse_args(argv)
    from clients import tables
    from training.train import train

    cfg, why = choose_config(args)
    if why:
        print(why, flush=True)
    print(tables.training(train(cfg, Path(args.out), resume=args.resume, started_at=started)))
    return 0
