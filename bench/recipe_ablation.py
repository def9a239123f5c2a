"""Which CPU recipe for the demo? Each variant of the ``fmnist-demo`` preset trains a fixed number of steps (so the
figure does not depend on how busy the machine is) and is scored on the standard protocol: the full Fashion-MNIST
train split as the kNN bank, the full test split as queries, weighted kNN k=20/200 (``index.metrics``), beside raw
pixels. Seconds per step are measured too (timed steps after warm-up), so a variant's quality can be weighed
against how many steps it gets in the demo's time budget.

    .venv/bin/python -m bench.recipe_ablation --steps 1000 [--variants base,nocolour,...] [--seeds 0,1] [--probe]

Resumable: a finished (variant, seed) is read back from its run directory. Writes a table on stdout and
``bench/results/recipe_ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.machine import load_average, machine

RESULTS = Path(__file__).resolve().parent / "results" / "recipe_ablation.json"
COLOURLESS = ["augment.view1.saturation=0", "augment.view1.hue=0", "augment.view1.grayscale_p=0",
              "augment.view2.saturation=0", "augment.view2.hue=0", "augment.view2.grayscale_p=0"]


# The variants were measured as changes to the preset as it was before this ablation; these overrides restore it on
# top of today's ``fmnist-demo`` (which is the ablation's winner, ``g2-crop0.85``), so every row reproduces.
PREVIOUS = ["augment.view1.crop_scale=(0.3,1.0)", "augment.view2.crop_scale=(0.3,1.0)", "encoder.pool=avg",
            "train.cpu_fast=false", *[f"augment.view{v}.{k}={x}" for v in (1, 2) for k, x in
                                      (("brightness", 0.4), ("contrast", 0.4), ("saturation", 0.2), ("hue", 0.1),
                                       ("grayscale_p", 0.2))]]


def CROP(low: float) -> list[str]:  # noqa: N802 (reads as a constant in the table below)
    return [f"augment.view1.crop_scale=({low},1.0)", f"augment.view2.crop_scale=({low},1.0)"]


def JITTER(strength: float) -> list[str]:  # noqa: N802
    return [f"augment.view{v}.{k}={strength}" for v in (1, 2) for k in ("brightness", "contrast")]


VARIANTS: dict[str, list[str]] = {
    "base": [],
    "cpu_fast": ["train.cpu_fast=true"],
    "nocolour": ["train.cpu_fast=true", *COLOURLESS],
    "crop0.2": ["train.cpu_fast=true", *COLOURLESS, "augment.view1.crop_scale=(0.2,1.0)",
                "augment.view2.crop_scale=(0.2,1.0)"],
    "crop0.5": ["train.cpu_fast=true", *COLOURLESS, "augment.view1.crop_scale=(0.5,1.0)",
                "augment.view2.crop_scale=(0.5,1.0)"],
    "bc0.8": ["train.cpu_fast=true", *COLOURLESS, "augment.view1.brightness=0.8", "augment.view1.contrast=0.8",
              "augment.view2.brightness=0.8", "augment.view2.contrast=0.8"],
    "lr1": ["train.cpu_fast=true", *COLOURLESS, "optim.lr_base=1.0"],
    "lr4": ["train.cpu_fast=true", *COLOURLESS, "optim.lr_base=4.0"],
    "tau0.98": ["train.cpu_fast=true", *COLOURLESS, "ema.tau_base=0.98"],
    "tau0.996": ["train.cpu_fast=true", *COLOURLESS, "ema.tau_base=0.996"],
    "batch256": ["train.cpu_fast=true", *COLOURLESS, "train.batch_size=256"],
    "heads2048": ["train.cpu_fast=true", *COLOURLESS, "heads.projector_hidden=2048", "heads.out_dim=256",
                  "heads.predictor_hidden=2048"],
    "width32": ["train.cpu_fast=true", *COLOURLESS, "encoder.width=32"],
    # second round: the first round's winners together, then one change at a time on top of them
    "combo": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.5), *JITTER(0.8)],
    "combo-crop0.7": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.7), *JITTER(0.8)],
    "combo-b64": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.5), *JITTER(0.8), "train.batch_size=64"],
    "combo-lr1": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.5), *JITTER(0.8), "optim.lr_base=1.0"],
    "combo-tau0.98": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.5), *JITTER(0.8), "ema.tau_base=0.98"],
    "combo-grid2": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.5), *JITTER(0.8), "encoder.pool=grid2"],
    "g2-crop0.7": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.7), *JITTER(0.8), "encoder.pool=grid2"],
    "g2-crop0.85": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.85), *JITTER(0.8), "encoder.pool=grid2"],
    "g2-crop0.95": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.95), *JITTER(0.8), "encoder.pool=grid2"],
    "g2-c85-j1.2": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.85), *JITTER(1.2), "encoder.pool=grid2"],
    "g2-c85-tau0.996": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.85), *JITTER(0.8), "encoder.pool=grid2",
                        "ema.tau_base=0.996"],
    "combo-multi": ["train.cpu_fast=true", *COLOURLESS, *CROP(0.5), *JITTER(0.8), "encoder.pool=multi"],
}


def run_variant(name: str, overrides: list[str], steps: int, seed: int, root: Path, probe: bool) -> dict:
    """Train (or read back) one variant and score it on the standard protocol."""
    out = root / f"{name}-s{seed}"
    done = out / "ablation.json"
    if done.is_file():
        return json.loads(done.read_text())
    import shutil

    from index import metrics
    from serving.contract.atomic import atomic_write_json
    from serving.contract.sources import load_fashion_mnist
    from training.artifact import load_encoder
    from training.config import apply_overrides, preset
    from training.eval import embed_images
    from training.train import train

    shutil.rmtree(out, ignore_errors=True)
    cfg = apply_overrides(preset("fmnist-demo"), [*PREVIOUS, *overrides, f"train.steps={steps}",
                                                  "train.max_minutes=None",
                                                  "train.knn_every=0", "train.checkpoint_every=0",
                                                  "train.progress=false", "train.device=cpu",
                                                  f"train.seed={seed}", "data.holdout_fraction=0"])
    load_before, t0 = load_average(), time.time()
    res = train(cfg, out)
    train_s = time.time() - t0
    encoder, _ = load_encoder(res.encoder_path)
    tr, te = load_fashion_mnist(None, "train"), load_fashion_mnist(None, "test")
    x_tr, x_te = embed_images(encoder, tr.images), embed_images(encoder, te.images)
    scores = metrics.score(x_tr, tr.labels, x_te, te.labels, probe=probe).as_dict()
    row = {"variant": name, "seed": seed, "overrides": overrides, "steps": steps, "train_s": round(train_s, 1),
           "s_per_step": round(train_s / steps, 4), "load_before": load_before, "load_after": load_average(),
           "knn": scores["knn"], "knn_200": scores["knn_200"], "probe": scores.get("probe"), "se": scores["se"]}
    atomic_write_json(done, row)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--probe", action="store_true", help="also fit the linear probe (slower)")
    p.add_argument("--root", type=Path, default=Path("runs/ablation"))
    args = p.parse_args()
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_variant(name, VARIANTS[name], args.steps, seed, args.root / str(args.steps), args.probe)
            rows.append(row)
            print(f"{name:<12} seed {seed}  kNN@20 {100 * row['knn']:.2f} ± {100 * row['se']['knn']:.2f}  "
                  f"kNN@200 {100 * row['knn_200']:.2f}  {row['s_per_step'] * 1000:.0f} ms/step "
                  f"(load {row['load_before']}→{row['load_after']})", flush=True)
    from serving.contract.atomic import atomic_write_json

    previous = json.loads(RESULTS.read_text())["rows"] if RESULTS.is_file() else []
    keep = [r for r in previous if (r["variant"], r["seed"], r["steps"]) not in
            {(r["variant"], r["seed"], r["steps"]) for r in rows}]
    atomic_write_json(RESULTS, {"benchmark": "recipe_ablation", "machine": machine(torch=torch.__version__),
                                "protocol": "standard (60k bank, 10k queries, weighted kNN T=0.07)",
                                "rows": keep + rows})


if __name__ == "__main__":
    main()
