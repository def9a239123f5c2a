"""Which CPU recipe for a user's folder? Each variant (overrides on the round's base recipe) trains on a generated
photo-like folder (``clients.workflows.synthetic``) within a wall-clock budget that counts from before the folder's
survey (as ``byol train --minutes`` does), and is scored on ``bench.folder_quality``'s protocol (seeded 5,000 bank /
1,000 query split, weighted kNN@20, linear probe) beside raw pixels and a random-init encoder of the variant's
architecture. Vectors are PyTorch's (no export: what is compared is the recipe; ``bench/folder_quality.py`` measures
the whole product path). Each row records steps, ms per step and the precision ``auto`` measured.

    taskset -c 1 .venv/bin/python -m bench.folder_ablation --kinds objects --sizes 64 --minutes 3 \\
        --variants old,base,stem-in,avg,b64
    # the AVX2 floor, imitated (../shared/ENVIRONMENT.md)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell taskset -c 1 \\
        .venv/bin/python -m bench.folder_ablation --kinds objects --sizes 64 --variants preset --tag avx2

``--diagnose`` (no training) shows what finished variants' neighbours share besides the class:

    .venv/bin/python -m bench.folder_ablation --diagnose --variants fast-max,max-inorm --seeds 0,1

Resumable: a finished (kind, size, variant, minutes, seed, tag) is read back from its run directory. Writes a table on
stdout and ``bench/results/folder_ablation.json`` (rows of other keys are kept).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.folder_quality import ensure_folder, raw_pixels, scores
from clients.workflows.synthetic import folder_pixels, labelled, scoring_split

RESULTS = Path(__file__).resolve().parent / "results" / "folder_ablation.json"


def views(**kw) -> list[str]:
    """The same change to both views (``crop_scale=(0.3,1.0)`` → two overrides)."""
    return [f"augment.view{v}.{k}={x}" for v in (1, 2) for k, x in kw.items()]


# The preset before issue 18 (the GPU recipe with a smaller batch on a CPU): what a user got.
OLD = ["encoder.arch=resnet18", "encoder.width=64", "encoder.pool=avg", "heads.projector_hidden=4096",
       "heads.out_dim=256", "heads.predictor_hidden=4096", "optim.lr_base=1.0", "optim.weight_decay=1e-5",
       "optim.trust=0.02", "optim.clip_lr=true", "optim.warmup_fraction=0.01", "ema.tau_base=0.99",
       *views(crop_scale=(0.08, 1.0), brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.2,
              blur_sigma=(0.1, 2.0)),
       "augment.view1.blur_p=1.0", "augment.view2.blur_p=0.1", "augment.view1.solarize_p=0.0",
       "augment.view2.solarize_p=0.2"]
# Round 1's base: the fmnist-demo recipe (resnet10 w16, 3×3/2 stem, grid2, heads 1024→128, batch 128, lr 2.0,
# τ 0.98) with colour views for colour photos: crops from 30 %, the paper's jitter, blur scaled to 64 px.
BASE = ["encoder.arch=resnet10", "encoder.stem=small-s2", "encoder.width=16", "encoder.pool=grid2",
        "heads.projector_hidden=1024", "heads.out_dim=128", "heads.predictor_hidden=1024", "train.batch_size=128",
        "optim.lr_base=2.0", "optim.weight_decay=1.5e-6", "optim.trust=1e-3", "optim.clip_lr=false",
        "optim.warmup_fraction=0.05", "ema.tau_base=0.98",
        *views(crop_scale=(0.3, 1.0), brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.2,
               blur_sigma=(0.1, 0.6)),
        "augment.view1.blur_p=1.0", "augment.view2.blur_p=0.1", "augment.view1.solarize_p=0.0",
        "augment.view2.solarize_p=0.2"]
R1: dict[str, list[str]] = {
    "old": OLD,
    "base": BASE,
    "stem-in": [*BASE, "encoder.stem=imagenet"],
    "avg": [*BASE, "encoder.pool=avg"],
    "b64": [*BASE, "train.batch_size=64"],
    "w32": [*BASE, "encoder.width=32"],
    "crop0.08": [*BASE, *views(crop_scale=(0.08, 1.0))],
    "crop0.5": [*BASE, *views(crop_scale=(0.5, 1.0))],
    "noblur": [*BASE, "augment.view1.blur_p=0.0", "augment.view2.blur_p=0.0"],
    "nohue": [*BASE, *views(hue=0.0)],
    "bc0.8": [*BASE, *views(brightness=0.8, contrast=0.8)],
    "lr1": [*BASE, "optim.lr_base=1.0"],
    "tau0.99": [*BASE, "ema.tau_base=0.99"],
}
# Round 2: the backgrounds' colours are the shortcut the paper's mild jitter leaves (round 1: trained ≈ random init
# < raw pixels); SimCLR's strength-1 colour distortion and stronger, on the base and on the fast shape.
FAST = [*BASE, "encoder.stem=imagenet", "train.batch_size=64"]
STRONG = views(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
R2: dict[str, list[str]] = {
    "strong": [*BASE, *STRONG],
    "strong-g5": [*BASE, *STRONG, *views(grayscale_p=0.5)],
    "fast-strong": [*FAST, *STRONG],
    "fast-max": [*FAST, *views(brightness=0.8, contrast=0.8, saturation=1.0, hue=0.5, grayscale_p=0.5)],
}
# Round 3: on fast-max (the first to reach raw pixels), more colour invariance, the pooling, the crops, the speed.
MAX = [*FAST, *views(brightness=0.8, contrast=0.8, saturation=1.0, hue=0.5, grayscale_p=0.5)]
R3: dict[str, list[str]] = {
    "max-g8": [*MAX, *views(grayscale_p=0.8)],
    "max-avg": [*MAX, "encoder.pool=avg"],
    "max-crop0.15": [*MAX, *views(crop_scale=(0.15, 1.0))],
    "max-crop0.5": [*MAX, *views(crop_scale=(0.5, 1.0))],
    "max-noblur": [*MAX, "augment.view1.blur_p=0.0", "augment.view2.blur_p=0.0"],
    "max-b128": [*MAX, "train.batch_size=128"],
    "max-s2": [*MAX, "encoder.stem=small-s2"],
    "max-w32": [*MAX, "encoder.width=32"],
}
R3.update({
    "max-lr4": [*MAX, "optim.lr_base=4.0"],
    "max-tau0.99": [*MAX, "ema.tau_base=0.99"],
    "max-tau0.95": [*MAX, "ema.tau_base=0.95"],
    "max-h512": [*MAX, "heads.projector_hidden=512", "heads.predictor_hidden=512"],
})
# Round 4: the schedule and the heads on max, and the position-free poolings (the items move).
R4: dict[str, list[str]] = {
    "max-lr1": [*MAX, "optim.lr_base=1.0"],
    "max-multi": [*MAX, "encoder.pool=multi"],
    "max-gray1": [*MAX, *views(grayscale_p=1.0)],
    "max-b32": [*MAX, "train.batch_size=32"],
}
# Round 5: the shortcut is the picture's exposure and colour cast (the trained encoders' neighbours share brightness
# 92-95 % of the time, raw pixels' 66 %): each image normalised by its own channel means and RMS contrast.
R5: dict[str, list[str]] = {
    "max-inorm": [*MAX, "encoder.input_norm=image"],
    "mild-inorm": [*MAX, "encoder.input_norm=image", *views(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                                                            grayscale_p=0.2)],
}
VARIANTS: dict[str, list[str]] = {"preset": [], **R1, **R2, **R3, **R4, **R5}


def train_variant(folder: Path, size: int, overrides: list[str], minutes: float, seed: int, out: Path) -> dict:
    """Train one variant on ``folder`` within ``minutes`` (from before the survey, as the command counts), or read
    back a finished training of an unscored row → ``summary.json``'s content."""
    from training.config import apply_overrides
    from training.folder import folder_preset
    from training.train import train

    if (out / "encoder.pt").is_file():
        return json.loads((out / "summary.json").read_text())
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    started = time.time()
    cfg, _ = folder_preset(folder, size, gpu=False)
    cfg = apply_overrides(cfg, [*overrides, f"train.max_minutes={minutes}", "train.steps=None", "train.epochs=1000",
                                "train.knn_every=0", "train.checkpoint_every=0", "train.progress=false",
                                "train.device=cpu", f"train.seed={seed}"])
    train(cfg, out, started_at=started)
    return json.loads((out / "summary.json").read_text())


def run_variant(kind: str, size: int, name: str, minutes: float, seed: int, root: Path, probe: bool,
                tag: str) -> dict:
    """Train (or read back) one variant and score it with the baselines."""
    from bench.machine import cpu_info, load_average
    from serving.contract.atomic import atomic_write_json
    from training.artifact import load_encoder
    from training.eval import embed_images, random_init_like

    folder = ensure_folder(root / "data", kind, size)
    out = root / "runs" / f"{kind}-{size}-{minutes:g}min{'-' + tag if tag else ''}" / f"{name}-s{seed}"
    done = out / "ablation.json"
    if done.is_file():
        return json.loads(done.read_text())
    load_before = load_average()
    summary = train_variant(folder, size, VARIANTS[name], minutes, seed, out)
    encoder, _ = load_encoder(out / "encoder.pt")
    paths, y, _ = labelled(folder)
    bank, query = scoring_split(len(paths))
    images = folder_pixels(folder, paths, size)
    cfg, m = summary["config"], summary["metrics"]
    row = {"kind": kind, "size": size, "variant": name, "seed": seed, "minutes": minutes, "tag": tag,
           "overrides": VARIANTS[name], "steps": m["steps"], "seconds": m["seconds"],
           "ms_per_step": round(1000 * m["seconds"]["training"] / max(1, m["steps"]), 1),
           "precision": m["precision"], "encoder": cfg["encoder"], "batch": cfg["train"]["batch_size"],
           "views": cfg["augment"],
           "cpu": cpu_info(), "load_before": load_before,
           "trained": scores(embed_images(encoder, images), y, bank, query, probe),
           "random_init": scores(embed_images(random_init_like(encoder, calibrate_on=images[bank]), images), y, bank,
                                 query, probe),
           "raw_pixels": raw_pixels(folder, size, root / "baselines", probe), "load_after": load_average()}
    atomic_write_json(done, row)
    return row


def diagnose(kind: str, size: int, names: list[str], seeds: list[int], minutes: float, root: Path, tag: str) -> None:
    """What trained encoders' neighbours share besides the class: weighted kNN@20 on the class and on nuisance
    labels (the image's brightness above the median, JPEG or PNG), trained variants beside raw pixels. A nuisance
    the neighbours agree on far more than raw pixels' do is what training latched onto (round 5's reason)."""
    import numpy as np

    from index.metrics import knn_accuracy, pixel_features
    from training.artifact import load_encoder
    from training.eval import embed_images

    folder = ensure_folder(root / "data", kind, size)
    paths, y, _ = labelled(folder)
    bank, query = scoring_split(len(paths))
    images = folder_pixels(folder, paths, size)
    level = images.reshape(len(images), -1).mean(1)
    targets = {"class": y, "bright": (level > np.median(level)).astype(np.int64),
               "jpeg": np.array([p.endswith(".jpg") for p in paths], dtype=np.int64)}

    def report(label: str, x: np.ndarray) -> None:
        print(f"{label:<22}" + "  ".join(f"{t} {100 * knn_accuracy(x[bank], v[bank], x[query], v[query], k=20):5.1f}"
                                          for t, v in targets.items()), flush=True)

    report("raw pixels", pixel_features(images))
    for name in names:
        for seed in seeds:
            run = root / "runs" / f"{kind}-{size}-{minutes:g}min{'-' + tag if tag else ''}" / f"{name}-s{seed}"
            encoder, _ = load_encoder(run / "encoder.pt")
            report(f"{name} s{seed}", embed_images(encoder, images))


def line(r: dict) -> str:
    def pct(v) -> str:
        return "  -  " if v is None else f"{100 * v:5.1f}"

    t, rnd, raw = r["trained"], r["random_init"], r["raw_pixels"]
    p = r["precision"] or {}
    return (f"{r['kind']:<9}{r['size']:>4} {r['variant']:<10} s{r['seed']} {r['steps']:>5} steps "
            f"{r['ms_per_step']:>5.0f} ms  kNN@20 {pct(t['knn'])} (random {pct(rnd['knn'])}, raw {pct(raw['knn'])})"
            f"  probe {pct(t['probe'])} ({pct(rnd['probe'])}, {pct(raw['probe'])})  {p.get('precision', '?')}"
            f"{'+cl' if p.get('channels_last') else ''}  load {r['load_before']}→{r['load_after']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="objects")
    p.add_argument("--sizes", default="64")
    p.add_argument("--variants", default="base")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--seeds", default="0")
    p.add_argument("--no-probe", dest="probe", action="store_false")
    p.add_argument("--tag", default="", help="names a machine setting (e.g. avx2) in the run directory and rows")
    p.add_argument("--root", type=Path, default=Path("runs/folder_quality"))
    p.add_argument("--diagnose", action="store_true",
                   help="no training: what the trained variants' neighbours share (class, brightness, JPEG)")
    args = p.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.diagnose:
        for kind in args.kinds.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                diagnose(kind, size, args.variants.split(","), [int(s) for s in args.seeds.split(",")],
                         args.minutes, args.root.resolve(), args.tag)
        return
    rows = []
    for kind in args.kinds.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for name in args.variants.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    rows.append(run_variant(kind, size, name, args.minutes, seed, args.root.resolve(), args.probe,
                                            args.tag))
                    print(line(rows[-1]), flush=True)
    save(rows)


def save(rows: list[dict]) -> None:
    import torch

    from bench.machine import cpu_line, machine
    from serving.contract.atomic import atomic_write_json

    print(cpu_line())

    def key(r: dict) -> tuple:
        return r["kind"], r["size"], r["variant"], r["minutes"], r["seed"], r.get("tag", "")

    previous = json.loads(RESULTS.read_text())["rows"] if RESULTS.is_file() else []
    keep = [r for r in previous if key(r) not in {key(r) for r in rows}]
    atomic_write_json(RESULTS, {"benchmark": "folder_ablation", "machine": machine(torch=torch.__version__),
                                "protocol": "bench.folder_quality's split (5,000 bank / 1,000 queries of 6,000), "
                                            "weighted kNN@20 T=0.07, linear probe; PyTorch vectors",
                                "rows": sorted(keep + rows, key=key)})


if __name__ == "__main__":
    main()
