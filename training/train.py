"""``byol train``: the BYOL loop (online f→g→q, EMA target f→g, LARS, per-step lr and τ), checkpoints, f_θ out.

The step itself is :func:`train_step` (one screen); :func:`train` wires data, networks, schedules, monitoring
and checkpoints around it. Resume is bit-identical on CPU: the checkpoint holds every RNG (torch, the
augmentation generator) and the data position, and the epoch order is a function of (seed, epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from serving.contract.atomic import atomic_write_json
from serving.contract.sources import ImageSet, SourceError
from training.artifact import save_encoder
from training.augment import BYOLAugment
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig, apply_overrides, preset
from training.data import Batcher, load_training_data
from training.distributed import DistInfo, cleanup, env_info, init_distributed, local_device
from training.ema import update_target
from training.eval import embed_images, knn_accuracy
from training.loss import byol_loss
from training.networks import EncoderConfig, MLPHead, build_encoder
from training.optim import build_lars
from training.schedules import lr_at, scaled_lr, tau_at

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, collapse, inconsistent resume); the message says what to change."""


class Branch(nn.Module):
    """Encoder f followed by projector g: the part shared by the online and the target network."""

    def __init__(self, encoder_cfg: EncoderConfig, projector_hidden: int, out_dim: int) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder_cfg)
        self.projector = MLPHead(self.encoder.out_dim, projector_hidden, out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.encoder(x)
        return y, self.projector(y)


class Online(nn.Module):
    """f_θ → g_θ → q_θ over both views in one call (one DDP forward per step)."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        h = cfg.heads
        self.branch = Branch(cfg.encoder, h.projector_hidden, h.out_dim)
        self.predictor = MLPHead(h.out_dim, h.predictor_hidden, h.out_dim)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor):
        y1, z1 = self.branch(v1)
        _, z2 = self.branch(v2)  # the two views get their own BN statistics, as in the reference
        return y1, self.predictor(z1), self.predictor(z2)


def make_target(online: Online) -> Branch:
    """ξ starts as a copy of θ's encoder + projector, takes no gradients and always runs in train mode."""
    target = copy.deepcopy(online.branch)
    for p in target.parameters():
        p.requires_grad_(False)
    return target.train()


def train_step(online: nn.Module, target: Branch, optimizer: torch.optim.Optimizer, augment: BYOLAugment,
               images: torch.Tensor, generator: torch.Generator, lr: float, tau: float, amp: bool,
               channels_last: bool, shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """One BYOL update; returns (loss, online representation of view 1) for logging (both detached)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    v1, v2 = augment(images, generator=generator, shard=shard)
    if channels_last:
        v1, v2 = v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with autocast:
        y1, p1, p2 = online(v1, v2)
        with torch.no_grad():
            _, t1 = target(v1)
            _, t2 = target(v2)
        loss = byol_loss(p1, p2, t1, t2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    raw = online.module if isinstance(online, nn.parallel.DistributedDataParallel) else online
    update_target(target, raw.branch, tau)
    return loss.detach(), y1.detach()


@dataclass
class TrainResult:
    encoder_path: Path
    checkpoint_path: Path
    steps: int
    metrics: dict = field(default_factory=dict)


def _total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    t = cfg.train
    if t.steps is None and t.epochs is None:
        raise ValueError("set train.steps or train.epochs")
    return int(t.steps) if t.steps is not None else int(t.epochs) * steps_per_epoch


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Monitor:
    """kNN on the labelled holdout (references: a seeded subset of the labelled training images)."""

    def __init__(self, train: ImageSet, holdout: ImageSet | None, max_train: int, max_holdout: int, k: int,
                 seed: int) -> None:
        self.enabled = holdout is not None and holdout.labels is not None and train.labels is not None
        if self.enabled:
            g = torch.Generator().manual_seed(seed + 7)
            idx = torch.randperm(len(train), generator=g)[:max_train].sort().values.numpy()
            hold = torch.randperm(len(holdout), generator=g)[:max_holdout].sort().values.numpy()
            self.ref, self.holdout, self.k = train.subset(idx), holdout.subset(hold), k

    def __call__(self, encoder: nn.Module) -> float | None:
        if not self.enabled:
            return None
        ref, hold = embed_images(encoder, self.ref.images), embed_images(encoder, self.holdout.images)
        return knn_accuracy(ref, self.ref.labels, hold, self.holdout.labels, k=self.k)


def train(cfg: TrainConfig, out_dir: Path, *, resume: bool = False, data: ImageSet | None = None,
          holdout: ImageSet | None = None, init_from: Path | None = None, stop_after: int | None = None) -> TrainResult:
    """Pretrain with BYOL and leave ``checkpoint.pt``, ``encoder.pt`` (f_θ only), ``summary.json`` and ``tb/``.

    ``data``/``holdout`` bypass ``cfg.data`` (the retrain command passes old+new images). ``init_from`` starts
    from another run's checkpoint (online, target, optimizer momentum) with fresh schedules over this run's step
    budget. ``stop_after`` halts after that global step with a checkpoint, as an interruption would (tests).
    """
    out_dir = Path(out_dir)
    ckpt_path, enc_path = out_dir / "checkpoint.pt", out_dir / "encoder.pt"
    dist_info = env_info()
    device = local_device(cfg.train.device, dist_info)
    init_distributed(dist_info, device)
    try:
        return _train(cfg, out_dir, ckpt_path, enc_path, dist_info, device, resume, data, holdout, init_from,
                      stop_after)
    finally:
        cleanup(dist_info)


def _train(cfg, out_dir, ckpt_path, enc_path, dist_info: DistInfo, device, resume, data, holdout, init_from,
           stop_after) -> TrainResult:
    t = cfg.train
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise TrainingError(f"nothing to resume: {ckpt_path} not found")
        state = load_checkpoint(ckpt_path)
        cfg = TrainConfig.from_dict(state["config"])  # the run goes on with the config it started with
        t = cfg.train
    elif ckpt_path.exists():
        raise TrainingError(f"{ckpt_path} already exists: pass --resume to continue it, or choose another --out")
    parent = load_checkpoint(init_from) if init_from is not None else None
    if parent is not None:
        pcfg = TrainConfig.from_dict(parent["config"])
        if (pcfg.encoder, pcfg.heads) != (cfg.encoder, cfg.heads):
            log.warning("init_from: using the parent's encoder/heads config (%s)", pcfg.encoder)
            cfg.encoder, cfg.heads = pcfg.encoder, pcfg.heads

    if data is None:
        d = cfg.data
        data, holdout = load_training_data(d.source, cfg.encoder.input_size, d.data_root, d.holdout_fraction,
                                           d.seed, d.max_images, d.labels_from_dirs, d.download)
    if len(data) == 0:
        raise SourceError("no training images")
    if data.images.shape[1:] != (cfg.encoder.input_size, cfg.encoder.input_size, 3):
        raise SourceError(f"training images are {list(data.images.shape[1:])}, the encoder expects "
                          f"{cfg.encoder.input_size}×{cfg.encoder.input_size}×3")

    torch.manual_seed(t.seed)  # identical init on every rank (the target is copied before DDP wraps online)
    online = Online(cfg).to(device)
    is_cuda = device.type == "cuda"
    if is_cuda and t.channels_last:
        online = online.to(memory_format=torch.channels_last)
    if dist_info.enabled and is_cuda:
        online = nn.SyncBatchNorm.convert_sync_batchnorm(online)
    target = make_target(online)
    batcher = Batcher(data.images, t.batch_size, t.seed, device, dist_info.rank, dist_info.world_size)
    peak_lr = scaled_lr(cfg.optim.lr_base, t.batch_size)  # t.batch_size is the GLOBAL batch
    o = cfg.optim
    optimizer = build_lars(online, peak_lr, o.momentum, o.weight_decay, o.trust)
    augment = BYOLAugment(cfg.augment, cfg.encoder.input_size).to(device)
    # The same augmentation stream on every rank: each draws the global batch's parameters and keeps its slice.
    generator = torch.Generator(device=device).manual_seed(t.seed * 7919)
    total = _total_steps(cfg, batcher.steps_per_epoch)
    step, calibrated, elapsed_before = 0, t.max_minutes is None, 0.0
    history: dict = {}

    source = state or parent
    if source is not None:
        online.load_state_dict(source["online"])
        target.load_state_dict(source["target"])
        optimizer.load_state_dict(source["optimizer"])
    if state is not None:
        step, total = int(state["step"]), int(state["total_steps"])
        calibrated, elapsed_before = bool(state["calibrated"]), float(state["elapsed_s"])
        batcher.load_state_dict(state["data"])
        _set_rng_state(state["rng"], generator)
        history = state.get("history", {})
        log.info("resuming %s at step %d of %d", ckpt_path, step, total)

    model = online
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(online, device_ids=[device.index] if is_cuda else None)
    monitor = _Monitor(data, holdout, t.knn_max_train, t.knn_max_holdout, t.knn_k, t.seed)
    main = dist_info.is_main
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / t.log_dir), purge_step=step)

    def checkpoint() -> None:
        if not main:
            return
        save_checkpoint(ckpt_path, {
            "online": online.state_dict(), "target": target.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "total_steps": total, "calibrated": calibrated,
            "elapsed_s": elapsed_before + time.time() - run_start, "data": batcher.state_dict(),
            "rng": _rng_state(generator), "config": cfg.to_dict(), "encoder_config": cfg.encoder.to_dict(),
            "history": history,
        })

    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, disable=not (main and t.progress), desc="byol", unit="step")
    run_start = time.time()
    calib_t0, calib_from = None, step
    last_loss, last_std, stopped = float("nan"), float("nan"), "done"
    online.train()
    while step < total:
        if stop_after is not None and step >= stop_after:
            stopped = "stop_after"
            break
        warmup = int(round(o.warmup_fraction * total))
        lr, tau = lr_at(step, total, peak_lr, warmup), tau_at(step, total, cfg.ema.tau_base)
        images = batcher.next()
        loss, y1 = train_step(model, target, optimizer, augment, images, generator, lr, tau,
                              amp=is_cuda and t.amp, channels_last=is_cuda and t.channels_last,
                              shard=(dist_info.rank, dist_info.world_size))
        step += 1
        bar.update(1)
        if step % t.log_every == 0 or step == total:
            last_loss = float(loss)
            last_std = float(F.normalize(y1.float(), dim=1).std(dim=0).mean())
            if not math.isfinite(last_loss):
                raise TrainingError(f"loss is {last_loss} at step {step} (lr {lr:.4g}); lower optim.lr_base")
            if last_std < t.collapse_std:
                raise TrainingError(f"representation collapsed at step {step}: embedding std {last_std:.2e} "
                                    f"< {t.collapse_std:g}; lower optim.lr_base or raise ema.tau_base")
            if writer:
                for k, v in (("loss", last_loss), ("lr", lr), ("tau", tau), ("embedding_std", last_std)):
                    writer.add_scalar(f"train/{k}", v, step)
            bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.3g}", tau=f"{tau:.4f}")
        if not calibrated:
            if calib_t0 is None and step - calib_from >= 2:  # skip the first steps (allocation, warm caches)
                calib_t0, calib_from = time.time(), step
            elif calib_t0 is not None and step - calib_from >= t.calibrate_steps:
                per_step = (time.time() - calib_t0) / (step - calib_from)
                # 5% headroom for the kNN monitor, checkpoints and a machine that slows down later
                budget = 0.95 * t.max_minutes * 60 - (elapsed_before + time.time() - run_start)
                fits = step + int(budget / per_step)
                if dist_info.enabled:  # every rank must run the same number of steps: rank 0 decides
                    fits_t = torch.tensor([fits], device=device)
                    torch.distributed.broadcast(fits_t, src=0)
                    fits = int(fits_t.item())
                if fits < total:
                    log.info("time budget %.1f min: %.3f s/step → schedules over %d steps instead of %d",
                             t.max_minutes, per_step, fits, total)
                    total = max(step + 1, fits)
                    bar.total = total
                calibrated = True
        if main and t.knn_every and step % t.knn_every == 0 and monitor.enabled:
            acc = monitor(online.branch.encoder)
            history[str(step)] = {"knn": acc, "loss": last_loss}
            if writer:
                writer.add_scalar("monitor/knn_accuracy", acc, step)
            log.info("step %d: holdout kNN@%d %.4f", step, t.knn_k, acc)
        if t.checkpoint_every and step % t.checkpoint_every == 0:
            checkpoint()
        elapsed = elapsed_before + time.time() - run_start
        over_time = t.max_minutes is not None and elapsed > t.max_minutes * 60 * 1.1
        if over_time and not dist_info.enabled:  # a safety net for a bad estimate (ranks could disagree)
            log.warning("time budget exceeded at step %d of %d; stopping", step, total)
            stopped = "time_budget"
            break
    bar.close()
    checkpoint()
    metrics = {"steps": step, "total_steps": total, "stopped": stopped, "final_loss": last_loss,
               "embedding_std": last_std,
               "train_minutes": round((elapsed_before + time.time() - run_start) / 60, 2),
               "images_per_s": round((step - (int(state["step"]) if state else 0)) * t.batch_size
                                     / max(1e-9, time.time() - run_start), 1)}
    if main and stopped != "stop_after":
        if monitor.enabled:
            metrics["holdout_knn"] = monitor(online.branch.encoder)
            if writer:
                writer.add_scalar("monitor/knn_accuracy", metrics["holdout_knn"], step)
        fingerprint = data.fingerprint()
        encoder = online.branch.encoder
        save_encoder(enc_path, encoder, meta={
            "config": cfg.to_dict(), "data_fingerprint": fingerprint, "metrics": metrics,
            "checkpoint": str(ckpt_path), "parent_version": None,
            "init_from": str(init_from) if init_from else None,
        })
        atomic_write_json(out_dir / "summary.json", {"metrics": metrics, "history": history,
                                                     "data_fingerprint": fingerprint, "n_images": len(data),
                                                     "config": cfg.to_dict()})
    if writer:
        writer.close()
    return TrainResult(enc_path, ckpt_path, step, metrics)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byol train", description="Pretrain an image encoder with BYOL.")
    p.add_argument("--preset", default="fmnist-demo", help="fmnist-demo | cifar10 | imagenet")
    p.add_argument("--out", required=True, help="run directory (checkpoint.pt, encoder.pt, tb/, summary.json)")
    p.add_argument("--data", default=None, help="fashion-mnist | cifar10 | DIR of images (overrides the preset)")
    p.add_argument("--data-root", default=None, help="where the dataset files live")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. optim.lr_base=0.3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue <out>/checkpoint.pt")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.source={json.dumps(args.data)}")
    if args.data_root:
        overrides.append(f"data.data_root={json.dumps(args.data_root)}")
    if args.device:
        overrides.append(f"train.device={json.dumps(args.device)}")
    cfg = apply_overrides(preset(args.preset), overrides)
    res = train(cfg, Path(args.out), resume=args.resume)
    m = res.metrics
    knn = f", holdout kNN {m['holdout_knn']:.4f}" if "holdout_knn" in m else ""
    print(f"trained {res.steps} steps in {m['train_minutes']} min ({m['images_per_s']} img/s), "
          f"final loss {m['final_loss']:.4f}{knn}")
    print(f"encoder: {res.encoder_path}\ncheckpoint: {res.checkpoint_path}")
    return 0
