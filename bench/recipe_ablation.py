"""Which CPU recipe for the demo? Each variant of the ``fmnist-demo`` preset trains either a fixed number of steps
(``--steps``: the figure does not depend on the machine's speed or load) or a wall-clock budget (``--minutes``: what
the demo's budget buys on *this* machine — run it on the floor machine, or imitate one, see below) and is scored on
the standard protocol: the full Fashion-MNIST train split as the kNN bank, the full test split as queries, weighted
kNN k=20/200 (``index.metrics``), beside raw pixels. Each row records the steps trained, the seconds per step, the
precision ``auto`` chose and the CPU (``bench.machine.cpu_info``).

    .venv/bin/python -m bench.recipe_ablation --steps 1000 [--variants base,nocolour,...] [--seeds 0,1] [--probe]
    # the AVX2 floor imitated on an AVX-512 box (one core, AVX2 kernels): ../shared/ENVIRONMENT.md
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell taskset -c 0 \
        .venv/bin/python -m bench.recipe_ablation --minutes 5 --variants r3-demo,r3-b64

Resumable: a finished (variant, seed, budget) is read back from its run directory. Writes a table on stdout and
``bench/results/recipe_ablation.json`` (rows of earlier rounds are kept).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.machine import cpu_info, cpu_line, load_average, machine

RESULTS = Path(__file__).resolve().parent / "results" / "recipe_ablation.json"
COLOURLESS = ["augment.view1.saturation=0", "augment.view1.hue=0", "augment.view1.grayscale_p=0",
              "augment.view2.saturation=0", "augment.view2.hue=0", "augment.view2.grayscale_p=0"]
BF16 = ["train.precision=bf16", "train.channels_last=true"]  # what rounds 1-2 called cpu_fast (an avx512_bf16 box)


# Rounds 1 and 2 were measured as changes to the preset as it was before them; these overrides restore it on top of
# today's ``fmnist-demo``, so every row reproduces.
PREVIOUS = ["augment.view1.crop_scale=(0.3,1.0)", "augment.view2.crop_scale=(0.3,1.0)", "encoder.pool=avg",
            "train.precision=fp32", "train.channels_last=false", "encoder.width=16", "train.batch_size=128",
            "optim.lr_base=2.0", "heads.projector_hidden=1024", "heads.predictor_hidden=1024", "ema.tau_base=0.99",
            *[f"augment.view{v}.{k}={x}" for v in (1, 2) for k, x in
              (("brightness", 0.4), ("contrast", 0.4), ("saturation", 0.2), ("hue", 0.1), ("grayscale_p", 0.2))]]


def CROP(low: float) -> list[str]:  # noqa: N802 (reads as a constant in the table below)
    return [f"augment.view1.crop_scale=({low},1.0)", f"augment.view2.crop_scale=({low},1.0)"]


def JITTER(strength: float) -> list[str]:  # noqa: N802
    return [f"augment.view{v}.{k}={strength}" for v in (1, 2) for k in ("brightness", "contrast")]


OLD: dict[str, list[str]] = {  # rounds 1-2, on PREVIOUS
    "base": [],
    "cpu_fast": [*BF16],
    "nocolour": [*BF16, *COLOURLESS],
    "crop0.2": [*BF16, *COLOURLESS, *CROP(0.2)],
    "crop0.5": [*BF16, *COLOURLESS, *CROP(0.5)],
    "bc0.8": [*BF16, *COLOURLESS, *JITTER(0.8)],
    "lr1": [*BF16, *COLOURLESS, "optim.lr_base=1.0"],
    "lr4": [*BF16, *COLOURLESS, "optim.lr_base=4.0"],
    "tau0.98": [*BF16, *COLOURLESS, "ema.tau_base=0.98"],
    "tau0.996": [*BF16, *COLOURLESS, "ema.tau_base=0.996"],
    "batch256": [*BF16, *COLOURLESS, "train.batch_size=256"],
    "heads2048": [*BF16, *COLOURLESS, "heads.projector_hidden=2048", "heads.out_dim=256",
                  "heads.predictor_hidden=2048"],
    "width32": [*BF16, *COLOURLESS, "encoder.width=32"],
    # second round: the first round's winners together, then one change at a time on top of them
    "combo": [*BF16, *COLOURLESS, *CROP(0.5), *JITTER(0.8)],
    "combo-crop0.7": [*BF16, *COLOURLESS, *CROP(0.7), *JITTER(0.8)],
    "combo-b64": [*BF16, *COLOURLESS, *CROP(0.5), *JITTER(0.8), "train.batch_size=64"],
    "combo-lr1": [*BF16, *COLOURLESS, *CROP(0.5), *JITTER(0.8), "optim.lr_base=1.0"],
    "combo-tau0.98": [*BF16, *COLOURLESS, *CROP(0.5), *JITTER(0.8), "ema.tau_base=0.98"],
    "combo-grid2": [*BF16, *COLOURLESS, *CROP(0.5), *JITTER(0.8), "encoder.pool=grid2"],
    "g2-crop0.7": [*BF16, *COLOURLESS, *CROP(0.7), *JITTER(0.8), "encoder.pool=grid2"],
    "g2-crop0.85": [*BF16, *COLOURLESS, *CROP(0.85), *JITTER(0.8), "encoder.pool=grid2"],
    "g2-crop0.95": [*BF16, *COLOURLESS, *CROP(0.95), *JITTER(0.8), "encoder.pool=grid2"],
    "g2-c85-j1.2": [*BF16, *COLOURLESS, *CROP(0.85), *JITTER(1.2), "encoder.pool=grid2"],
    "g2-c85-tau0.996": [*BF16, *COLOURLESS, *CROP(0.85), *JITTER(0.8), "encoder.pool=grid2", "ema.tau_base=0.996"],
    "combo-multi": [*BF16, *COLOURLESS, *CROP(0.5), *JITTER(0.8), "encoder.pool=multi"],
}
# Round 3: the floor machine (AVX2 only, fp32 measured faster) in the demo's 5-minute wall-clock budget.
R3: dict[str, list[str]] = {
    "r3-demo": [],
    "r3-b64": ["train.batch_size=64"],
    "r3-b256": ["train.batch_size=256"],
    "r3-w12": ["encoder.width=12"],
    "r3-w24": ["encoder.width=24"],
    "r3-heads512": ["heads.projector_hidden=512", "heads.predictor_hidden=512"],
    "r3-lr3": ["optim.lr_base=3.0"],
    "r3-tau0.98": ["ema.tau_base=0.98"],
    # the round's winners together
    "r3-t98-h512": ["ema.tau_base=0.98", "heads.projector_hidden=512", "heads.predictor_hidden=512"],
    "r3-t98-lr3": ["ema.tau_base=0.98", "optim.lr_base=3.0"],
    "r3-t98-lr3-h512": ["ema.tau_base=0.98", "optim.lr_base=3.0", "heads.projector_hidden=512",
                        "heads.predictor_hidden=512"],
    "r3-t97-lr3-h512": ["ema.tau_base=0.97", "optim.lr_base=3.0", "heads.projector_hidden=512",
                        "heads.predictor_hidden=512"],
}
# Round 4: where the information is (the layout of a centred 28-px garment): finer maps, finer pooling.
R4: dict[str, list[str]] = {
    "r4-t98": ["ema.tau_base=0.98"],
    "r4-s1w8": ["ema.tau_base=0.98", "encoder.stem=small", "encoder.width=8"],
    "r4-s1w8-g4": ["ema.tau_base=0.98", "encoder.stem=small", "encoder.width=8", "encoder.pool=grid4"],
    "r4-g2s3": ["ema.tau_base=0.98", "encoder.pool=grid2+s3"],
    "r4-g2s3-h512": ["ema.tau_base=0.98", "encoder.pool=grid2+s3", "heads.projector_hidden=512",
                     "heads.predictor_hidden=512"],
}
# Round 3 ran on the preset with τ_base 0.99 (round 4 chose 0.98): restored under it, so its rows reproduce.
VARIANTS: dict[str, list[str]] = {**{k: [*PREVIOUS, *v] for k, v in OLD.items()},
                                  **{k: ["ema.tau_base=0.99", *v] for k, v in R3.items()}, **R4}


def run_variant(name: str, overrides: list[str], steps: int | None, minutes: float | None, seed: int, root: Path,
                probe: bool) -> dict:
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
    horizon = [f"train.steps={steps}", "train.max_minutes=None"] if steps else \
        [f"train.max_minutes={minutes}", "train.steps=None", "train.epochs=1000"]  # the budget alone sets K
    cfg = apply_overrides(preset("fmnist-demo"), [*overrides, *horizon, "train.knn_every=0",
                                                  "train.checkpoint_every=0", "train.progress=false",
                                                  "train.device=cpu", f"train.seed={seed}"])
    load_before, t0 = load_average(), time.time()
    res = train(cfg, out)
    train_s = time.time() - t0
    encoder, _ = load_encoder(res.encoder_path)
    tr, te = load_fashion_mnist(None, "train"), load_fashion_mnist(None, "test")
    x_tr, x_te = embed_images(encoder, tr.images), embed_images(encoder, te.images)
    scores = metrics.score(x_tr, tr.labels, x_te, te.labels, probe=probe).as_dict()
    m = res.metrics
    row = {"variant": name, "seed": seed, "overrides": overrides, "steps": res.steps, "budget_minutes": minutes,
           "train_s": round(train_s, 1), "s_per_step": round(train_s / max(1, res.steps), 4),
           "images_per_s": m["images_per_s"], "precision": m["precision"], "cpu": cpu_info(),
           "load_before": load_before, "load_after": load_average(),
           "knn": scores["knn"], "knn_200": scores["knn_200"], "probe": scores.get("probe"), "se": scores["se"]}
    atomic_write_json(done, row)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="fixed steps per variant (default 1000)")
    p.add_argument("--minutes", type=float, default=None, help="a wall-clock training budget instead of --steps")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--probe", action="store_true", help="also fit the linear probe (slower)")
    p.add_argument("--root", type=Path, default=Path("runs/ablation"))
    args = p.parse_args()
    if args.steps and args.minutes:
        p.error("give --steps or --minutes, not both")
    steps = None if args.minutes else (args.steps or 1000)
    budget = f"{args.minutes:g}min" if args.minutes else str(steps)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_variant(name, VARIANTS[name], steps, args.minutes, seed, args.root / budget, args.probe)
            rows.append(row)
            p_ = row.get("precision") or {}
            print(f"{name:<16} seed {seed}  {row['steps']:>5} steps  kNN@20 {100 * row['knn']:.2f} ± "
                  f"{100 * row['se']['knn']:.2f}  kNN@200 {100 * row['knn_200']:.2f}  "
                  f"{row['s_per_step'] * 1000:.0f} ms/step  {p_.get('precision', '?')}"
                  f"{'+cl' if p_.get('channels_last') else ''}  (load {row['load_before']}→{row['load_after']})",
                  flush=True)
    print(cpu_line())
    from serving.contract.atomic import atomic_write_json

    previous = json.loads(RESULTS.read_text())["rows"] if RESULTS.is_file() else []

    def key(r: dict) -> tuple:
        return r["variant"], r["seed"], r.get("budget_minutes") or r["steps"]

    keep = [r for r in previous if key(r) not in {key(r) for r in rows}]
    atomic_write_json(RESULTS, {"benchmark": "recipe_ablation", "machine": machine(torch=torch.__version__),
                                "protocol": "standard (60k bank, 10k queries, weighted kNN T=0.07)",
                                "rows": keep + rows})


if __name__ == "__main__":
    main()
