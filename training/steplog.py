"""What the loop reports every ``train.log_every`` steps: TensorBoard scalars, the progress bar, and two aborts;
and, once at the start of a session, a picture of the views it trains on (:func:`log_view_pairs`).

Reading the loss back from the device forces a sync, so it happens only on logged steps (and the last one); the
NaN and collapse checks ride on the same read, which is why they too only look at logged steps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.errors import TrainingError
from training.pictures import view_pairs

VIEW_PAIRS = 8  # images in the augmentation picture


def open_writer(log_dir: Path, step: int) -> Any:
    """A TensorBoard writer that drops events past ``step`` (left by the interrupted session a resume continues)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir), purge_step=step)


def log_view_pairs(writer: Any, augment: torch.nn.Module, images: np.ndarray, step: int, seed: int = 0) -> np.ndarray:
    """``augment/views`` at ``step``: a few training images over their T and T′ views (see
    :func:`training.pictures.view_pairs`; training's own RNG streams are untouched). Returns the picture."""
    grid = view_pairs(augment, images[:VIEW_PAIRS], seed)
    writer.add_image("augment/views", grid, step, dataformats="HWC")
    return grid


def progress_bar(total: int, step: int, enabled: bool) -> Any:
    """tqdm over the run's steps, starting at ``step`` on a resume (rank 0 only: ``enabled``)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=step, disable=not enabled, desc="byol", unit="step")


def embedding_std(y: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised representations: near 0 when every image maps to one point."""
    return float(F.normalize(y.float(), dim=1).std(dim=0).mean())


class StepLogger:
    """Progress and scalars for each step; raises :class:`TrainingError` on a NaN loss or a collapsed embedding,
    with what to change. ``writer`` (``add_scalar``) and ``bar`` (tqdm-like) are optional: rank 0 alone writes."""

    def __init__(self, log_every: int, collapse_std: float, writer: Any = None, bar: Any = None) -> None:
        self.log_every, self.collapse_std, self.writer, self.bar = log_every, collapse_std, writer, bar
        self.last_loss, self.last_std = float("nan"), float("nan")

    def log(self, step: int, total: int, loss: torch.Tensor, y: torch.Tensor, lr: float, tau: float) -> None:
        """After update ``step`` (1-based) of ``total``; ``loss``/``y`` as :func:`training.byol.train_step` returns
        them."""
        if self.bar is not None:
            self.bar.update(1)
        if step % self.log_every != 0 and step != total:
            return
        self.last_loss, self.last_std = float(loss), embedding_std(y)
        if not math.isfinite(self.last_loss):
            raise TrainingError(f"loss is {self.last_loss} at step {step} (lr {lr:.4g}); lower optim.lr_base")
        if self.last_std < self.collapse_std:
            raise TrainingError(f"representation collapsed at step {step}: embedding std {self.last_std:.2e} "
                                f"< {self.collapse_std:g}; lower optim.lr_base or raise ema.tau_base")
        if self.writer is not None:
            for k, v in (("loss", self.last_loss), ("lr", lr), ("tau", tau), ("embedding_std", self.last_std)):
                self.writer.add_scalar(f"train/{k}", v, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.last_loss:.3f}", lr=f"{lr:.3g}", tau=f"{tau:.4f}")

    def set_total(self, total: int) -> None:
        """The time budget lowered K: the bar's end moves with it."""
        if self.bar is not None and self.bar.total != total:
            self.bar.total = total

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
