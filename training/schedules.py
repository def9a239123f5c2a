"""Per-step schedules: linear-warmup + cosine learning rate and BYOL's cosine τ (both computed every step)."""

from __future__ import annotations

import math


def scaled_lr(lr_base: float, global_batch: int) -> float:
    """The paper's linear scaling rule: lr = base × batch / 256 (with the GLOBAL batch under DDP)."""
    return lr_base * global_batch / 256


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int) -> float:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def tau_at(step: int, total_steps: int, tau_base: float) -> float:
    """τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2: τ_base at k = 0, rising to 1 at k = K (clamped beyond K)."""
    k = min(step, total_steps)
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * k / max(1, total_steps)) + 1.0) / 2.0
