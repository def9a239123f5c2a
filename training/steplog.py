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

from training.errors import RunFailed
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
    """Progress and scalars for each step; raises :class:`RunFailed` on a non-finite loss or a collapsed embedding,
    naming the step and what to change. ``writer`` (``add_scalar``) and ``bar`` (tqdm-like) are optional: rank 0
    alone writes.

    Reading the loss back forces a device sync, so on CUDA the checks ride on the logged steps; on the CPU there is
    nothing to wait for and the loss is checked at every step (a run of a few slow steps, stopped by its time
    budget between two logged steps, was otherwise never checked at all). :meth:`finish` checks the last step
    whatever it was. ``context`` (lr base, precision) only completes the error's hint.
    """

    def __init__(self, log_every: int, collapse_std: float, writer: Any = None, bar: Any = None,
                 every_step: bool = False, context: dict | None = None) -> None:
        self.log_every, self.collapse_std, self.writer, self.bar = log_every, collapse_std, writer, bar
        self.every_step, self.context = every_step, context or {}
        self.last_loss, self.last_std = float("nan"), float("nan")
        self._last: tuple | None = None  # (step, loss, y, lr) of the last step, for finish()
        self._checked = 0  # the last step whose loss and std were checked

    def log(self, step: int, total: int, loss: torch.Tensor, y: torch.Tensor, lr: float, tau: float) -> None:
        """After update ``step`` (1-based) of ``total``; ``loss``/``y`` as :func:`training.byol.train_step` returns
        them."""
        if self.bar is not None:
            self.bar.update(1)
        self._last = (step, loss, y, lr)
        logged = step % self.log_every == 0 or step == total
        if self.every_step and not logged:
            self._check_loss(step, float(loss), lr)
        if not logged:
            return
        self._check(step, loss, y, lr)
        if self.writer is not None:
            for k, v in (("loss", self.last_loss), ("lr", lr), ("tau", tau), ("embedding_std", self.last_std)):
                self.writer.add_scalar(f"train/{k}", v, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.last_loss:.3f}", lr=f"{lr:.3g}", tau=f"{tau:.4f}")

    def finish(self) -> None:
        """Check the run's last step (loss and embedding std) if no logged step did: what the run ends with."""
        if self._last is not None and self._checked != self._last[0]:
            step, loss, y, lr = self._last
            self._check(step, loss, y, lr)

    def _check(self, step: int, loss: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        self.last_loss, self.last_std = float(loss), embedding_std(y)
        self._check_loss(step, self.last_loss, lr)
        if not self.last_std >= self.collapse_std:  # NaN included
            raise RunFailed("collapsed", step, f"representation collapsed at step {step}: embedding std "
                            f"{self.last_std:.2e} < train.collapse_std {self.collapse_std:g}; lower optim.lr_base"
                            f"{self._now('lr_base')} or raise ema.tau_base{self._now('tau_base')}")
        self._checked = step

    def _check_loss(self, step: int, loss: float, lr: float) -> None:
        if not math.isfinite(loss):
            self.last_loss = loss
            raise RunFailed("diverged", step, f"training diverged at step {step}: loss is {loss} (lr {lr:.4g}); "
                            f"lower optim.lr_base{self._now('lr_base')}"
                            + ("" if self.context.get("precision") == "fp32" else
                               f", or train in fp32 (--set train.precision=fp32; now "
                               f"{self.context.get('precision', '?')})"))

    def _now(self, key: str) -> str:
        return f" (now {self.context[key]:g})" if key in self.context else ""

    def set_total(self, total: int) -> None:
        """The time budget lowered K: the bar's end moves with it."""
        if self.bar is not None and self.bar.total != total:
            self.bar.total = total

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
