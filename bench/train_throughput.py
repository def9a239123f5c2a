"""Training throughput: batched on-device augmentation (ours) vs a per-image torchvision pipeline, same BYOL step.

Both pipelines feed the SAME model, optimizer and step (``training.train.train_step``: online f→g→q on both views,
target f→g, LARS, EMA) with the same batches; rounds alternate ours/reference so machine noise hits both alike.
The reference is what a plain torchvision BYOL recipe does: ``transforms.v2`` of the same T/T′ applied image by
image in a Python loop on the CPU (uint8 CHW tensors), stacked and moved to the device. The augmentation alone is
timed the same way. Prints a table with ratios (ours / reference) and writes
``bench/results/train_throughput_{cpu,cuda}.json``.

    python -m bench.train_throughput              # ≤ ~2 min on a 2-core CPU
    python -m bench.train_throughput --quick      # ~20 s (demo shape only)
    python -m bench.train_throughput --device cuda --batch 512
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.augment import AugmentConfig, BYOLAugment, ViewConfig, blur_radius
from training.config import TrainConfig, preset
from training.optim import build_lars
from training.precision import choose, set_tf32
from training.schedules import scaled_lr
from training.train import Online, make_target, train_step
from training.tv import import_torchvision

RESULTS = Path(__file__).resolve().parent / "results"
FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
POOL = 2048  # images the batches are drawn from


class TorchvisionViews:
    """Reference: the same T/T′ as ``transforms.v2`` pipelines, applied one image at a time on the CPU."""

    def __init__(self, cfg: AugmentConfig, size: int, device: torch.device) -> None:
        self.t1, self.t2 = _tv_pipeline(cfg.view1, size), _tv_pipeline(cfg.view2, size)
        self.device = device

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None, shard=(0, 1)):
        """uint8 [B, H, W, 3] on the CPU → two float32 [B, 3, size, size] on the device (global torch RNG;
        single process only, ``shard`` is accepted for train_step's signature)."""
        v1, v2 = [], []
        for img in images:
            chw = img.permute(2, 0, 1)
            v1.append(self.t1(chw))
            v2.append(self.t2(chw))
        nb = self.device.type == "cuda"
        return torch.stack(v1).to(self.device, non_blocking=nb), torch.stack(v2).to(self.device, non_blocking=nb)


def _tv_pipeline(v: ViewConfig, size: int):
    import_torchvision()  # registers the missing op schemas first where needed
    from torchvision.transforms import v2 as t

    return t.Compose([
        t.RandomResizedCrop(size, scale=v.crop_scale, ratio=v.crop_ratio, antialias=True),
        t.RandomHorizontalFlip(v.flip_p),
        t.RandomApply([t.ColorJitter(v.brightness, v.contrast, v.saturation, v.hue)], p=v.jitter_p),
        t.RandomGrayscale(v.grayscale_p),
        t.RandomApply([t.GaussianBlur(2 * blur_radius(size) + 1, sigma=v.blur_sigma)], p=v.blur_p),
        t.RandomSolarize(threshold=128, p=v.solarize_p),  # uint8 images: 128 ≙ 0.5
        t.ToDtype(torch.float32, scale=True),
    ])


@dataclass
class Shape:
    name: str
    cfg: TrainConfig
    batch: int
    budget_s: float  # step timing budget (both pipelines together)
    min_rounds: int
    max_rounds: int
    precision: str = "auto"  # training.precision: auto measures fp32/bf16 and the layout on this step
    precision_layout: bool | str = "auto"


def _pool(size: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Fashion-MNIST training images at 28 px when installed, else deterministic noise (augment cost is
    content-independent)."""
    if size == 28 and (FMNIST_ROOT / "train-images-idx3-ubyte.gz").is_file():
        from serving.contract.sources import load_fashion_mnist

        return load_fashion_mnist(FMNIST_ROOT, "train").images[:POOL], "fashion-mnist train"
    return np.random.default_rng(seed).integers(0, 256, (POOL, size, size, 3), dtype=np.uint8), "uniform noise"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(run_ours, run_ref, device, budget_s: float, min_rounds: int, max_rounds: int) -> dict:
    """Alternate ours / reference after one untimed warm-up each; stop at the budget (≥ min_rounds)."""
    run_ours(), run_ref()
    _sync(device)
    times = {"ours": 0.0, "ref": 0.0}
    rounds, start = 0, time.perf_counter()
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < budget_s):
        for key, fn in (("ours", run_ours), ("ref", run_ref)):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[key] += time.perf_counter() - t0
        rounds += 1
    return {"rounds": rounds, "ours_s": times["ours"], "ref_s": times["ref"]}


def measure(shape: Shape, device: torch.device, aug_budget_s: float, seed: int = 0) -> dict:
    """Augmentation-only and full-step throughput (images/s, each image yielding two views) for one shape."""
    cfg, b = shape.cfg, shape.batch
    size = cfg.encoder.input_size
    pool, source = _pool(size, seed)
    pool_cpu = torch.from_numpy(pool)
    pool_dev = pool_cpu.to(device)  # ours: the dataset lives on the training device as uint8
    ours = BYOLAugment(cfg.augment, size)
    ref = TorchvisionViews(cfg.augment, size, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    pick = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def batch_idx() -> torch.Tensor:
        return torch.randint(0, len(pool), (b,), generator=pick)

    aug = _interleaved(lambda: ours(pool_dev[batch_idx().to(device)], gen), lambda: ref(pool_cpu[batch_idx()]),
                       device, aug_budget_s, min_rounds=2, max_rounds=200)

    online = Online(cfg).to(device)
    target = make_target(online)
    o = cfg.optim
    lr = scaled_lr(o.lr_base, b)
    opt = build_lars(online, lr, o.momentum, o.weight_decay, o.trust)
    set_tf32(device)
    choice = choose(online, target, ours, (b, size, size, 3), shape.precision, shape.precision_layout,
                    {"lr": lr, "momentum": o.momentum, "weight_decay": o.weight_decay, "trust": o.trust}, device)
    amp, channels_last = choice.amp, choice.channels_last  # the same step for both pipelines
    if channels_last:
        online, target = online.to(memory_format=torch.channels_last), target.to(memory_format=torch.channels_last)

    def step(augment, images) -> None:
        loss, _ = train_step(online, target, opt, augment, images, gen, lr, cfg.ema.tau_base, amp, channels_last)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss in the benchmark step ({shape.name})")

    steps = _interleaved(lambda: step(ours, pool_dev[batch_idx().to(device)]),
                         lambda: step(ref, pool_cpu[batch_idx()]),
                         device, shape.budget_s, shape.min_rounds, shape.max_rounds)
    e = cfg.encoder
    h = cfg.heads
    row = {
        "shape": shape.name, "batch": b, "input_size": size, "data": source,
        "encoder": f"{e.arch}/{e.stem}/w{e.width}", "heads": f"{h.projector_hidden}->{h.out_dim}",
        "aug_rounds": aug["rounds"], "step_rounds": steps["rounds"],
        "aug_ours_img_s": b * aug["rounds"] / aug["ours_s"], "aug_ref_img_s": b * aug["rounds"] / aug["ref_s"],
        "step_ours_img_s": b * steps["rounds"] / steps["ours_s"],
        "step_ref_img_s": b * steps["rounds"] / steps["ref_s"], "precision": choice.as_dict(),
    }
    row["aug_ratio"] = row["aug_ours_img_s"] / row["aug_ref_img_s"]
    row["step_ratio"] = row["step_ours_img_s"] / row["step_ref_img_s"]
    return row


def _shapes(args) -> list[Shape]:
    demo = preset("fmnist-demo")
    e = demo.encoder
    e.arch, e.stem, e.width, e.input_size = args.arch or e.arch, args.stem or e.stem, args.width or e.width, \
        args.size or e.input_size
    if args.heads:
        hidden, out = (int(v) for v in args.heads.split(","))
        demo.heads.projector_hidden = demo.heads.predictor_hidden = hidden
        demo.heads.out_dim = out
    prec = {"precision": args.precision, "precision_layout": _layout(args.channels_last)}
    shapes = [Shape("fmnist-demo", demo, args.batch, args.budget, min_rounds=2, max_rounds=1000, **prec)]
    if args.cifar_steps > 0:
        cifar = preset("cifar10")
        shapes.append(Shape("cifar10", cifar, args.cifar_batch, 0.0, args.cifar_steps, args.cifar_steps, **prec))
    return shapes


def machine_info(device: torch.device) -> dict:
    tv = import_torchvision()
    from bench.machine import cpu_info

    info = {
        "device": str(device), "cpu_cores": os.cpu_count(), "cpu": cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "torchvision": tv.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _table(rows: list[dict]) -> str:
    head = ("shape", "batch", "encoder", "aug ours", "aug ref", "aug ×", "step ours", "step ref", "step ×", "rounds")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join([
            r["shape"], str(r["batch"]), r["encoder"], f"{r['aug_ours_img_s']:,.0f}", f"{r['aug_ref_img_s']:,.0f}",
            f"{r['aug_ratio']:.2f}", f"{r['step_ours_img_s']:,.1f}", f"{r['step_ref_img_s']:,.1f}",
            f"{r['step_ratio']:.2f}", f"{r['aug_rounds']}/{r['step_rounds']}",
        ]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch", type=int, default=128, help="batch of the demo shape (default 128)")
    p.add_argument("--arch", help="demo-shape encoder arch (default: the fmnist-demo preset's)")
    p.add_argument("--stem", help="demo-shape stem (default: the preset's)")
    p.add_argument("--width", type=int, help="demo-shape width (default: the preset's)")
    p.add_argument("--size", type=int, help="demo-shape input size in px (default: the preset's, 28)")
    p.add_argument("--heads", help="demo-shape heads as HIDDEN,OUT (default: the preset's, 1024,128)")
    p.add_argument("--budget", type=float, default=None, help="seconds of step timing for the demo shape")
    p.add_argument("--aug-budget", type=float, default=None, help="seconds of augmentation-only timing per shape")
    p.add_argument("--cifar-steps", type=int, default=None, help="timed CIFAR-shape steps per pipeline (0: skip)")
    p.add_argument("--cifar-batch", type=int, default=None, help="batch of the CIFAR shape (default: 16 on CPU)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="precision of the step, both pipelines (auto: the faster here, as training chooses it)")
    p.add_argument("--channels-last", default="auto", choices=("auto", "true", "false"))
    p.add_argument("--quick", action="store_true", help="~20 s: short budgets, demo shape only")
    p.add_argument("--out", type=Path, help="JSON path (default: bench/results/train_throughput_<device>.json)")
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch must be at least 2 (BatchNorm needs two samples)")
    quick = args.quick
    args.budget = args.budget if args.budget is not None else (4.0 if quick else 30.0)
    args.aug_budget = args.aug_budget if args.aug_budget is not None else (2.0 if quick else 8.0)
    args.cifar_steps = args.cifar_steps if args.cifar_steps is not None else (0 if quick else 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cifar_batch is None:
        args.cifar_batch = args.batch if device.type == "cuda" else 16
    info = machine_info(device)
    rows = []
    for shape in _shapes(args):
        print(f"measuring {shape.name} (batch {shape.batch}) on {device} ...", file=sys.stderr, flush=True)
        rows.append(measure(shape, device, args.aug_budget))
    print(_table(rows))
    from bench.machine import cpu_line

    print(cpu_line(info["cpu"]) + "; precision " + ", ".join(
        f"{r['shape']} {r['precision']['precision']}{'+channels_last' if r['precision']['channels_last'] else ''}"
        for r in rows))
    print("img/s = source images per second (each yields two views); × = ours / reference; "
          f"device {device}, {info['cpu_cores']} cores, {info['torch_threads']} torch threads, "
          f"load {info['load_avg_1m_at_start']}")
    from serving.contract.atomic import atomic_write_json

    out = args.out or RESULTS / f"train_throughput_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"benchmark": "train_throughput", "machine": info, "quick": args.quick, "results": rows})
    print(f"wrote {out}")
    return 0


def _layout(text: str) -> bool | str:
    return text if text == "auto" else text == "true"


if __name__ == "__main__":
    raise SystemExit(main())
