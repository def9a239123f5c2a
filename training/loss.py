"""BYOL's regression loss: 2 − 2·cos(q_θ(z₁), sg(z′₂)), symmetrised by swapping the views and *summed*."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``2 − 2·cos(p, z)`` (the squared distance of the L2-normalised vectors); ``target`` is detached
    here so no gradient can reach the target network whatever the caller does."""
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.detach().float(), dim=-1)
    return 2.0 - 2.0 * (p * z).sum(dim=-1)


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric BYOL loss, batch mean: view 1's prediction regresses view 2's target projection and vice versa.

    The paper sums the two terms (range [0, 8]), it does not average them.
    """
    return (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()
