"""Stage 3 of ``bench/gpu.sh``: training throughput, ours vs the reference per-image loop, at the model and batch
of the run that follows (the ``fmnist-gpu`` preset), so the ratio is the one that run gets.

The measurement is ``bench.train_throughput.measure`` (the same BYOL step for both pipelines, rounds interleaved,
precision chosen by ``training.precision`` as training chooses it); this stage only builds its shape from a preset
instead of the demo's, bounds its budgets so the stage stays under a minute, turns on cuDNN autotuning as
``training.train`` does, and writes the JSON with the GPU named and the issue's goal (≥ 3× the reference).

    python -m bench.gpu_throughput --out gpu_throughput.json [--preset fmnist-gpu] [--budget 20] [--set k=v ...]
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="fmnist-gpu")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of the preset (the smoke shrinks the model and batch)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of step timing, both pipelines together")
    p.add_argument("--aug-budget", type=float, default=5.0, help="seconds of augmentation-only timing")
    p.add_argument("--out", required=True, help="JSON path")
    args = p.parse_args(argv)
    import torch

    from bench.gpu_common import GOAL_STEP_RATIO, device, write
    from bench.train_throughput import Shape, measure
    from training.config import apply_overrides, preset

    cfg = apply_overrides(preset(args.preset), args.overrides)
    dev = device()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training.train: fixed shapes, cuDNN picks its kernels once
    t = cfg.train
    shape = Shape(args.preset, cfg, t.batch_size, args.budget, min_rounds=2, max_rounds=1000,
                  precision=t.precision, precision_layout=t.channels_last)
    row = measure(shape, dev, args.aug_budget)
    row["meets_goal"] = row["step_ratio"] >= GOAL_STEP_RATIO
    write(args.out, "gpu_throughput", {"preset": args.preset, "overrides": args.overrides, "device": str(dev),
                                       "budget_s": args.budget, "aug_budget_s": args.aug_budget,
                                       "goal_step_ratio": GOAL_STEP_RATIO, "results": [row]})
    print(f"{args.preset} (batch {row['batch']}, {row['encoder']}, {row['precision']['precision']}"
          f"{'+channels_last' if row['precision']['channels_last'] else ''}) on {dev}: step ours "
          f"{row['step_ours_img_s']:,.0f} img/s vs reference {row['step_ref_img_s']:,.0f} img/s = "
          f"{row['step_ratio']:.2f}× (goal ≥ {GOAL_STEP_RATIO:g}×); augmentation alone {row['aug_ratio']:.1f}×  "
          f"→ {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
