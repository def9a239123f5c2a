"""``byol train``: the BYOL loop (online f→g→q, EMA target f→g, LARS, per-step lr and τ), checkpoints, f_θ out.

This module is the loop and nothing else; each of its jobs lives in a module of its own:

- :mod:`training.byol`: the networks and :func:`train_step` (one update);
- :mod:`training.state`: the run's state, built fresh, restored for ``--resume`` or seeded ``init_from`` a parent,
  and the checkpoint payload (bit-identical resume on CPU: every RNG and the data position are in it);
- :mod:`training.budget`: ``train.max_minutes`` (the horizon K lowered to the steps that fit);
- :mod:`training.precision`: fp32 or bf16, contiguous or channels_last, measured on this machine (``auto``);
- :mod:`training.steplog`: TensorBoard, progress bar, NaN and collapse aborts;
- :mod:`training.monitor`: holdout kNN every ``train.knn_every`` steps;
- :mod:`training.summary`: ``config.yaml`` at the start; ``encoder.pt``, ``summary.json``, TensorBoard hparams and
  ``report.html`` (:mod:`training.report`) at the end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from serving.contract.sources import ImageSet
from training.budget import TimeBudget
from training.byol import Branch, Online, make_target, train_step
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.distributed import DistInfo, cleanup, env_info, init_distributed, leave_together, local_device
from training.errors import RunFailed, TrainingError
from training.monitor import KnnMonitor
from training.precision import set_tf32
from training.schedules import lr_at, tau_at
from training.state import (
    TrainState,
    build_state,
    checkpoint_payload,
    choose_precision,
    ddp_model,
    load_weights,
    restore,
    starting_point,
    training_data,
    warmup_steps,
)
from training.steplog import StepLogger, progress_bar
from training.summary import run_metrics, start_run, write_artifacts, write_failure

__all__ = ["Branch", "Online", "RunFailed", "TrainResult", "TrainingError", "make_target", "train", "train_step"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    encoder_path: Path
    checkpoint_path: Path
    steps: int
    metrics: dict = field(default_factory=dict)


def train(cfg: TrainConfig, out_dir: Path, *, resume: bool = False, data: ImageSet | None = None,
          holdout: ImageSet | None = None, init_from: Path | None = None, stop_after: int | None = None,
          started_at: float | None = None) -> TrainResult:
    """Pretrain with BYOL and leave ``checkpoint.pt``, ``encoder.pt`` (f_θ only), ``config.yaml``, ``summary.json``,
    ``report.html`` and ``tb/``.

    ``data``/``holdout`` bypass ``cfg.data`` (the retrain command passes old+new images). ``init_from`` starts
    from another run's checkpoint (online, target, optimizer momentum) with fresh schedules over this run's step
    budget. ``stop_after`` halts after that global step with a checkpoint, as an interruption would (tests).
    ``started_at`` (``time.time()``; default: now) is when the user's clock started: ``train.max_minutes`` counts
    from there, so the command's own set-up (a folder's scan, its statistics) is inside the budget.

    A run that diverges or collapses raises :class:`training.errors.RunFailed` naming the step and what to change;
    it writes no ``encoder.pt`` and no checkpoint of the broken weights, only ``summary.json`` saying so.
    """
    started_at = time.time() if started_at is None else started_at
    dist_info = env_info()
    device = local_device(cfg.train.device, dist_info)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
        set_tf32(device)  # "fp32" on CUDA is TF32 (training.precision)
    init_distributed(dist_info, device)
    try:
        result = _train(cfg, Path(out_dir), dist_info, device, resume, data, holdout, init_from, stop_after,
                        started_at)
        leave_together(dist_info)
        return result
    finally:
        cleanup(dist_info)


def _train(cfg: TrainConfig, out_dir: Path, dist_info: DistInfo, device: torch.device, resume: bool,
           data: ImageSet | None, holdout: ImageSet | None, init_from: Path | None,
           stop_after: int | None, started_at: float) -> TrainResult:
    """The loop, nanoGPT-style: set up, then per step schedules → update → log → budget → monitor → checkpoint.
    Every rank runs it; rank 0 (``main``) alone writes files, TensorBoard, the bar and the kNN monitor."""
    ckpt_path, enc_path, main = out_dir / "checkpoint.pt", out_dir / "encoder.pt", dist_info.is_main
    cfg, own, parent = starting_point(cfg, ckpt_path, resume, init_from)
    t = cfg.train
    data, holdout = training_data(cfg, data, holdout)
    state = build_state(cfg, data, device, dist_info)
    if own is not None:
        restore(state, own)
        log.info("resuming %s at step %d of %d", ckpt_path, state.step, state.total_steps)
    elif parent is not None:
        load_weights(state, parent)
    budget = TimeBudget(t.max_minutes, t.calibrate_steps, state.step, state.elapsed_before, dist_info.enabled, device,
                        skip_steps=t.calibrate_after, started=started_at)  # set-up and precision count too
    choice = choose_precision(state, device, dist_info)
    model, target = ddp_model(state.online, dist_info, device), state.target
    if t.compile:  # the state keeps the raw modules: checkpoints never see the compiled wrappers
        model, target = torch.compile(model), torch.compile(target)
    writer = start_run(out_dir, state, data) if main else None  # config.yaml, TensorBoard, the views' picture
    monitor = KnnMonitor(data, holdout, t.knn_max_train, t.knn_max_holdout, t.knn_k, t.seed, t.knn_every, writer)
    logger = StepLogger(t.log_every, t.collapse_std, writer,
                        progress_bar(state.total_steps, state.step, main and t.progress),
                        every_step=device.type == "cpu",
                        context={"lr_base": cfg.optim.lr_base, "tau_base": cfg.ema.tau_base,
                                 "precision": choice.precision})
    start_step = state.step
    timing = {"setup": round(budget.run_seconds(), 1)}
    loop_start = time.time()
    budget.start_loop()
    state.online.train()
    try:
        stopped = _loop(state, cfg, model, target, choice, dist_info, logger, budget, monitor, ckpt_path, main,
                        stop_after)
        logger.finish()  # the last step too, logged or not: a broken final state is never saved
    except RunFailed as exc:
        logger.close()
        if main:
            write_failure(out_dir, state, exc, run_metrics(state, exc.kind, logger, budget, start_step,
                                                           time.time() - loop_start), writer)
        raise
    logger.close()
    timing["training"] = round(time.time() - loop_start, 1)
    if main:
        save_checkpoint(ckpt_path, checkpoint_payload(state, budget.elapsed()))
    metrics = run_metrics(state, stopped, logger, budget, start_step, timing["training"])
    metrics["seconds"] = timing
    if main and stopped != "stop_after":
        write_artifacts(out_dir, enc_path, ckpt_path, state, data, metrics, monitor, init_from, started_at)
    if writer is not None:
        writer.close()
    return TrainResult(enc_path, ckpt_path, state.step, metrics)


def _loop(state: TrainState, cfg: TrainConfig, model, target, choice, dist_info: DistInfo, logger: StepLogger,
          budget: TimeBudget, monitor: KnnMonitor, ckpt_path: Path, main: bool, stop_after: int | None) -> str:
    """Steps until K (or ``stop_after``, or the over-time net); returns why it stopped."""
    t = cfg.train
    while state.step < state.total_steps:
        if stop_after is not None and state.step >= stop_after:
            return "stop_after"
        lr = 0.0 if state.warmup_steps is None else lr_at(state.step, state.total_steps, state.peak_lr,
                                                          state.warmup_steps)
        tau = tau_at(state.step, state.total_steps, cfg.ema.tau_base)
        loss, y1 = train_step(model, target, state.optimizer, state.augment, state.batcher.next(),
                              state.generator, lr, tau, amp=choice.amp, channels_last=choice.channels_last,
                              shard=(dist_info.rank, dist_info.world_size))
        state.step += 1
        logger.log(state.step, state.total_steps, loss, y1, lr, tau)
        if not state.calibrated:
            state.total_steps, state.calibrated = budget.calibrate(state.step, state.total_steps)
            state.warmup_steps = warmup_steps(cfg, state.total_steps, state.calibrated)
            logger.set_total(state.total_steps)
        if main:
            monitor.at_step(state.step, state.online.branch.encoder, state.history, logger.last_loss)
        if main and t.checkpoint_every and state.step % t.checkpoint_every == 0:
            save_checkpoint(ckpt_path, checkpoint_payload(state, budget.elapsed()))
        # a safety net for a bad estimate (single process only); not before K is fixed: a set-up that ate the
        # budget leaves K = the next step at calibration, so the schedules still end instead of stopping at lr 0
        if state.calibrated and budget.over_time():
            log.warning("time budget exceeded at step %d of %d; stopping", state.step, state.total_steps)
            return "time_budget"
    return "done"
