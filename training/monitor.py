"""The kNN monitor: how good f_θ's embeddings are for classification, measured while training runs.

BYOL's loss says little about representation quality (it can fall while embeddings collapse or stagnate), so every
``train.knn_every`` steps rank 0 embeds a labelled holdout and scores it by weighted kNN against a seeded subset of
the labelled training images, with the same metric as ``byol eval`` and the retrain gate
(:func:`index.metrics.knn_accuracy`), so the figures in ``summary.json`` compare with theirs. Each measurement also
draws the first few holdout queries beside their nearest references (``monitor/neighbours`` in TensorBoard, and
the run report's grid): the embeddings that were just computed, so the picture costs no extra forward pass.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from index.metrics import knn_accuracy
from serving.contract.sources import ImageSet
from training.eval import embed_images
from training.pictures import neighbour_grid

log = logging.getLogger(__name__)

GRID_QUERIES, GRID_NEIGHBOURS = 6, 6  # rows and neighbours per row of the neighbour grid


class KnnMonitor:
    """kNN on the labelled holdout (references: a seeded subset of the labelled training images).

    Disabled (``enabled`` False) when either set has no labels, e.g. a folder of unlabelled images. The subsets are
    drawn from their own generator, so monitoring never shifts the training RNG (resume stays bit-identical).
    """

    def __init__(self, train: ImageSet, holdout: ImageSet | None, max_train: int, max_holdout: int, k: int,
                 seed: int, every: int = 0, writer: Any = None) -> None:
        self.k, self.every, self.writer = k, every, writer
        self.last_grid: np.ndarray | None = None  # the latest neighbour grid (uint8 HWC), for the run report
        self.enabled = holdout is not None and holdout.labels is not None and train.labels is not None
        if self.enabled:
            g = torch.Generator().manual_seed(seed + 7)
            idx = torch.randperm(len(train), generator=g)[:max_train].sort().values.numpy()
            hold = torch.randperm(len(holdout), generator=g)[:max_holdout].sort().values.numpy()
            self.ref, self.holdout = train.subset(idx), holdout.subset(hold)

    def __call__(self, encoder: nn.Module) -> float | None:
        """Holdout kNN accuracy of ``encoder`` (None when disabled)."""
        return self._measure(encoder)[0] if self.enabled else None

    def _measure(self, encoder: nn.Module) -> tuple[float, np.ndarray]:
        ref, hold = embed_images(encoder, self.ref.images), embed_images(encoder, self.holdout.images)
        acc = knn_accuracy(ref, self.ref.labels, hold, self.holdout.labels, k=self.k)
        n = min(GRID_QUERIES, len(hold))
        grid = neighbour_grid(self.holdout.images[:n], self.holdout.labels[:n], hold[:n], self.ref.images,
                              self.ref.labels, ref, GRID_NEIGHBOURS)
        return acc, grid

    def measure(self, step: int, encoder: nn.Module) -> float | None:
        """:meth:`__call__`, also written to TensorBoard at ``step``: ``monitor/knn_accuracy`` and the neighbour
        grid ``monitor/neighbours`` (kept as :attr:`last_grid` for the report)."""
        if not self.enabled:
            return None
        acc, self.last_grid = self._measure(encoder)
        if self.writer is not None:
            self.writer.add_scalar("monitor/knn_accuracy", acc, step)
            if hasattr(self.writer, "add_image"):
                self.writer.add_image("monitor/neighbours", self.last_grid, step, dataformats="HWC")
        return acc

    def at_step(self, step: int, encoder: nn.Module, history: dict, loss: float) -> None:
        """Every ``every`` steps (0: never): measure and record ``{"knn", "loss"}`` under ``history[str(step)]``,
        the run's learning curve that checkpoints carry across resumes and ``summary.json`` keeps."""
        if not (self.every and step % self.every == 0 and self.enabled):
            return
        acc = self.measure(step, encoder)
        history[str(step)] = {"knn": acc, "loss": loss}
        log.info("step %d: holdout kNN@%d %.4f", step, self.k, acc)
