"""Quality against time on the CPU: the ``fmnist-demo`` preset trained with budgets of 2, 5, 10, 30 and 60 minutes,
each scored on the standard protocol (full train split as the bank, full test split as queries; kNN@20, kNN@200,
linear probe) beside raw pixels and a random-init encoder (BatchNorm calibrated) measured in the same run.

One command, resumable: a budget whose run finished is read back; one killed half-way resumes from its checkpoint
(the time budget counts the earlier session). Writes ``bench/results/quality_curve.json`` and
``bench/results/quality_curve.png`` (kNN@20 against minutes, with the raw-pixel and random-init lines).
Run it on a quiet machine: the budget is wall-clock time, so a busy machine trains fewer steps.

    .venv/bin/python -m bench.quality_curve [--minutes 2,5,10,30,60] [--preset fmnist-demo] [--root runs/curve]
    # the AVX2 floor, imitated on one core (../shared/ENVIRONMENT.md)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell taskset -c 0 .venv/bin/python \
        -m bench.quality_curve --minutes 2,5,10,30 --name quality_curve_avx2 --label "1 AVX2 core" \
        --root runs/curve-avx2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def train_budget(preset_name: str, minutes: float, root: Path) -> Path:
    """Train (or finish, or read back) one budget's run; returns its encoder file."""
    from training.config import apply_overrides, preset
    from training.train import train

    out = root / f"{preset_name}-{minutes:g}min"
    encoder = out / "encoder.pt"
    if encoder.is_file():
        return encoder
    cfg = apply_overrides(preset(preset_name), [f"train.max_minutes={minutes}", "train.steps=None",
                                                "train.epochs=1000", "train.progress=false"])
    train(cfg, out, resume=(out / "checkpoint.pt").is_file())
    return encoder


def score_run(encoder_file: Path, baselines: bool) -> dict:
    """The standard protocol on one budget's encoder (read back when this run already scored it); the baselines
    (raw pixels, random init) do not depend on the budget, so only the first budget measures them."""
    from clients.workflows.evaluation import EvalConfig, evaluate
    from serving.contract.atomic import atomic_write_json

    done = encoder_file.parent / ("curve_eval.json" if baselines else "curve_eval_trained.json")
    if done.is_file():
        return json.loads(done.read_text())
    report = evaluate(EvalConfig(encoder=str(encoder_file), baselines=baselines))
    summary = json.loads((encoder_file.parent / "summary.json").read_text())
    report["train"] = {k: summary["metrics"].get(k) for k in ("steps", "train_minutes", "images_per_s", "precision")}
    atomic_write_json(done, report)
    return report


def plot(rows: list[dict], baselines: dict, path: Path, machine_line: str = "2 CPU cores") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    minutes = [r["minutes"] for r in rows]
    ax.plot(minutes, [100 * r["trained"]["knn"] for r in rows], "o-", label="BYOL (fmnist-demo), kNN@20")
    ax.plot(minutes, [100 * r["trained"]["probe"] for r in rows], "s--", label="BYOL, linear probe", alpha=0.7)
    for name, style in (("raw_pixels", "k:"), ("random_init", "r:")):
        ax.axhline(100 * baselines[name]["knn"], linestyle=style[1:], color=style[0],
                   label=f"{name.replace('_', ' ')}, kNN@20")
    ax.set_xscale("log")
    ax.set_xticks(minutes, [f"{m:g}" for m in minutes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"training minutes ({machine_line})")
    ax.set_ylabel("accuracy on Fashion-MNIST test (%)")
    ax.set_title("Standard protocol: 60k bank, 10k queries")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", default="2,5,10,30,60")
    p.add_argument("--preset", default="fmnist-demo")
    p.add_argument("--root", type=Path, default=Path("runs/curve"))
    p.add_argument("--name", default="quality_curve",
                   help="results file stem (e.g. quality_curve_avx2 for the AVX2 floor; the CPU is recorded inside)")
    p.add_argument("--label", default="2 CPU cores", help="what the plot's x axis says about the machine")
    args = p.parse_args()
    import torch

    from bench.machine import load_average, machine
    from serving.contract.atomic import atomic_write_json

    info, rows = machine(torch=torch.__version__), []
    baselines: dict = {}
    for i, minutes in enumerate(float(m) for m in args.minutes.split(",")):
        before = load_average()
        report = score_run(train_budget(args.preset, minutes, args.root), baselines=i == 0)
        baselines = baselines or {k: report[k] for k in ("raw_pixels", "random_init")}
        rows.append({"minutes": minutes, "load_before": before, "load_after": load_average(), **report})
        t = report["trained"]
        print(f"{minutes:>5g} min  {report['train']['steps']:>6} steps  kNN@20 {100 * t['knn']:.2f}  kNN@200 "
              f"{100 * t['knn_200']:.2f}  probe {100 * t['probe']:.2f}   (raw pixels kNN@20 "
              f"{100 * baselines['raw_pixels']['knn']:.2f}, random init {100 * baselines['random_init']['knn']:.2f})",
              flush=True)
    from bench.machine import cpu_line

    print(cpu_line(info["cpu"]))
    atomic_write_json(RESULTS / f"{args.name}.json", {"benchmark": "quality_curve", "preset": args.preset,
                                                      "machine": info, "baselines": baselines, "rows": rows})
    plot(rows, baselines, RESULTS / f"{args.name}.png", args.label)
    print(f"wrote {RESULTS / (args.name + '.json')} and {args.name}.png")


if __name__ == "__main__":
    main()
